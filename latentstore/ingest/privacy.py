"""Pseudonyms: what the store holds instead of names, and how an operator finds the file behind one.

Hospitals put names and MRNs in folder and file names (`Doe^John_MRN123456/...`), so no raw file name,
folder name, DICOM UID or archive root enters the store. Ingest keeps them in the driver and stores:

    scan_id      scan-<16 hex>  HMAC-SHA256(salt, "scan", site, raw scan name)   (BIDS name, stem, series UID)
    source_uri   file-<16 hex>  HMAC-SHA256(salt, "file", site, archive-relative path)
    patient_key  64 hex         HMAC-SHA256(salt, site, raw patient id)          (`store.patient_key`)

Error reasons are scrubbed of every name of the files they concern (`Redactor.scrub`). The salt is the
store's (`Store.salt`): without it nobody can test a guessed name against a pseudonym; with it and the
archive, `latentstore locate PSEUDONYM ARCHIVE` recomputes the pseudonyms of every file and scan of the
archive and names the match (`locate`).

The site enters every key, so two hospitals' `sub-001` are two patients. Re-ingesting the same archive
from another mount must not make new patients, so the default site is not taken from the path: it is
the site already stored for any scan of the archive (same content hash), else `site-<8 hex>` derived
from the archive's content (its smallest content hash), i.e. once per archive. `--site NAME` overrides
it; a name given there is stored in clear in `slices.site` and `runs.args`, so it should name the
site, not a patient.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

PSEUDONYM = re.compile(r"^(scan|file)-[0-9a-f]{16}$")
SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def pseudonym(kind: str, raw: str, salt: bytes, site: str) -> str:
    """`<kind>-<16 hex>`: HMAC-SHA256 under the store's salt of the kind, the site and the raw name."""
    msg = f"{kind}\0{site}\0{raw}".encode("utf-8", "surrogateescape")
    return f"{kind}-" + hmac.new(salt, msg, hashlib.sha256).hexdigest()[:16]


def relative(path, root: Path) -> str:
    """`path` relative to the archive root as a POSIX string (the input of a `file-` pseudonym)."""
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        try:
            return p.resolve().relative_to(root).as_posix()
        except (ValueError, OSError, RuntimeError):
            return p.as_posix()


def shown(path) -> str:
    """A path as printed on the terminal: undecodable bytes as escapes, never an exception."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def check_site(site: str) -> str:
    if not SITE.match(site or ""):
        raise InputError(f"--site {site!r}: use 1-64 letters, digits, '.', '_' or '-' (a site name, not a patient)")
    return site


@dataclass
class Redactor:
    """Pseudonyms and scrubbed reasons for one archive under one site."""

    root: Path
    salt: bytes
    site: str

    def file(self, path) -> str:
        return pseudonym("file", relative(path, self.root), self.salt, self.site)

    def scan(self, name: str) -> str:
        return pseudonym("scan", name, self.salt, self.site)

    def scrub(self, text: str, paths=()) -> str:
        """`text` with the archive root, each of `paths` (as given, absolute and relative; a path becomes
        its pseudonym) and each of their file and folder names (`…`) removed."""
        text = str(text)
        whole: dict[str, str] = {}
        names: set[str] = set()
        for p in paths:
            if not p:
                continue
            p = Path(p)
            rel = relative(p, self.root)
            fake = self.file(p)
            for form in {str(p), rel, str(self.root / rel)}:
                whole[form] = fake
            names.update(part for part in Path(rel).parts if len(part) >= 3 and part not in (".", ".."))
        for form in sorted(whole, key=len, reverse=True):
            text = text.replace(form, whole[form])
        text = text.replace(f"{self.root}/", "").replace(str(self.root), "<archive>")
        for name in sorted(names, key=len, reverse=True):
            text = re.sub(rf"(?<![\w^]){re.escape(name)}(?![\w^])", "…", text)
        return text.encode("utf-8", "replace").decode("utf-8")


def default_site(store, content_hashes: list[str], salt: bytes) -> str:
    """The site of an archive without `--site`: the one stored for its scans, else derived from its content."""
    stored = stored_sites(store, content_hashes)
    if len(stored) > 1:
        raise InputError(f"scans of this archive are stored under several sites ({', '.join(sorted(stored))}); "
                         "pass --site to say which one it is")
    if stored:
        return stored.pop()
    seed = min(content_hashes) if content_hashes else ""
    return "site-" + hmac.new(salt, f"site\0{seed}".encode(), hashlib.sha256).hexdigest()[:8]


def stored_sites(store, content_hashes: list[str] | None = None) -> set[str]:
    """Sites of the store's slices (of the scans with these content hashes, when given)."""
    import pyarrow.compute as pc

    if not store.slices.parts():
        return set()
    try:
        table = store.slices.read(columns=["site", "content_hash"])
    except Exception:  # noqa: BLE001 - a store written before sites existed has no site column
        return set()
    if content_hashes is not None:
        table = table.filter(pc.is_in(table["content_hash"], value_set=__import__("pyarrow").array(content_hashes)))
    return {s for s in table.column("site").to_pylist() if s}


def known_sites(store) -> set[str]:
    """Every site the store's slices or ingest runs name."""
    from .. import catalog

    sites = stored_sites(store)
    try:
        con = catalog.reader(store)
        try:
            rows = con.execute("SELECT DISTINCT json_extract_string(args, '$.site') FROM runs WHERE stage = 'ingest'").fetchall()
        finally:
            con.close()
        sites |= {r[0] for r in rows if r[0]}
    except Exception:  # noqa: BLE001 - no catalog yet: the slices' sites are all there is
        pass
    return sites


def by_scan_id(store, keyed: dict) -> dict:
    """`{(raw scan name, ...): value}` -> `{(scan_id, ...): value}` under every site of the store, so labels
    written against the archive's names (a synth `ground_truth.csv`, a hospital's list) meet the store's
    pseudonyms. Every key also passes through as it is (pseudonyms, and stores of raw ids)."""
    salt = store.existing_salt()
    sites = sorted(known_sites(store)) if salt is not None else []
    out = {}
    for key, value in keyed.items():
        name, rest = key[0], tuple(key[1:])
        out[(name, *rest)] = value  # a pseudonym already, or a store written before pseudonyms existed
        if PSEUDONYM.match(name):
            continue
        for site in sites:
            out[(pseudonym("scan", name, salt, site), *rest)] = value
    return out


def pseudonym_map(store, archive, kinds=("scan", "file")) -> dict[str, tuple[str, str]]:
    """pseudonym -> (site, what it stands for) over `archive`, for every site of the store: a file's or
    folder's archive-relative path (`file-`), a scan's raw name (`scan-`). Reads the archive's names
    (and, for scans, its CT headers); writes nothing."""
    from .scan import scan_archive

    root = Path(archive).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"archive {archive} is not a folder")
    salt = store.existing_salt()
    if salt is None:
        raise InputError(f"{store.root} has no salt: nothing was ingested into it")
    found: dict[str, tuple[str, str]] = {}
    names = []
    if "scan" in kinds:
        sources, errors = scan_archive(root, salt)
        names = [s.name for s in sources] + [e.name for e in errors if e.name]
    for site in sorted(known_sites(store)):
        red = Redactor(root, salt, site)
        if "file" in kinds:
            found[red.file(root)] = (site, ".")
            for folder, dirs, files in os.walk(root):
                for name in [*dirs, *files]:
                    path = Path(folder, name)
                    found[red.file(path)] = (site, shown(relative(path, root)))
        for name in names:
            found[red.scan(name)] = (site, shown(name))
    return found


def locate(store, target: str, archive) -> list[dict]:
    """The file or scan of `archive` whose pseudonym is `target` (a `scan-` or `file-` id), under every
    site the store knows: `[{"pseudonym", "site", "path" or "scan"}]`, empty when none matches."""
    if not PSEUDONYM.match(target):
        raise InputError(f"{target!r} is not a pseudonym (scan-<16 hex> or file-<16 hex>)")
    kind = target.split("-", 1)[0]
    hit = pseudonym_map(store, archive, kinds=(kind,)).get(target)
    if hit is None:
        return []
    site, what = hit
    return [{"pseudonym": target, "site": site, ("path" if kind == "file" else "scan"): what}]
