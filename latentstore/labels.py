"""`latentstore labels import`: grade and fracture labels into the catalog, matched to stored scans.

Formats (told by the content; `--format` to insist):

* `verse-wide`: the VerSe grade table, one row per scan: `verse_ID` (`verse004` or `sub-verse004`) and one
  `<LEVEL>_fx-g` column per level (`L1_fx-g`), values 0-3, `x` or empty = not visible (skipped, no error).
* `grades-json`: `{"train"|"val"|"test": {"sub-verse004_16": 2, ...}}` (scan, underscore, VerSe label number).
* `manifest`: a CSV with `patient_id`, `vertebra` (`L1`), `genant_grade`, optionally `split`.
* `long`: a CSV with `scan`, `level` (number or name) and `grade` and/or `fracture` (0/1, true/false),
  optionally `height_loss`, `split`; a synth archive's `ground_truth.csv` is one.

Scans are named as the archive names them (`sub-verse004`); they are matched to the store's pseudonyms
under its salt and sites (`ingest/privacy.py`), first by scan name, else by patient (the BIDS subject: every
scan of that patient gets the row). Raw names are never stored. A row whose scan is not in the store yet is
kept under the store's only site (it matches once the scan is ingested), or rejected when the store has
several sites. Malformed rows are rejected with their line numbers; the rest is kept.

Versions: an import is a (source, file hash); importing a source's current file again is a no-op, a
changed (or an older) file becomes the source's current label set (view `labels`) and the old rows stay in
`label_rows` so a refit can see what changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import catalog
from .errors import InputError, StoreError
from .levels import NAMES, level_label, strict_label
from .result import Result
from .store import Store, connect

FORMATS = ("verse-wide", "grades-json", "manifest", "long")
MAX_REJECTS_KEPT = 100


@dataclass(frozen=True)
class LabelRow:
    """One label as read from a file, before matching: the scan as the archive names it."""

    scan: str
    level: int
    grade: int | None
    fracture: bool
    line: int
    height_loss: float | None = None
    split: str | None = None


@dataclass
class ImportSummary(Result):
    """What one `labels import` did."""

    source: str
    format: str
    file_sha256: str
    import_id: str | None = None  # None: the same file was imported for this source before (no-op)
    rows_read: int = 0
    rows: int = 0  # stored
    matched: int = 0
    unmatched_scans: int = 0
    rejected: int = 0
    rejects: list[str] = field(default_factory=list)

    def __rich__(self):
        if self.import_id is None:
            return f"{self.source}: this file ({self.file_sha256[:12]}) was imported already; nothing changed"
        lines = [f"{self.source} ({self.format}): {self.rows} label rows stored as {self.import_id}, "
                 f"{self.matched} matched to stored slices, {self.unmatched_scans} scan(s) not in the store yet, "
                 f"{self.rejected} rejected"]
        lines += [f"  rejected {r}" for r in self.rejects[:10]]
        return "\n".join(lines)


# -- reading ----------------------------------------------------------------------------------------------


def read_labels(path: str | os.PathLike, fmt: str | None = None) -> tuple[str, list[LabelRow], list[str]]:
    """`(format, rows, rejects)` of a label file; rejects are "line N: why". Raises InputError only when the
    file as a whole is unusable (missing, unknown format, no rows)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no label file {path}")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read label file ({getattr(e, 'strerror', None) or e})") from None
    fmt = fmt or _detect(text, path)
    rows, rejects = _READERS[fmt](text)
    if not rows and not rejects:
        raise InputError(f"{path}: no label rows")
    return fmt, rows, rejects


def _detect(text: str, path: Path) -> str:
    if text.lstrip().startswith("{"):
        return "grades-json"
    header = {h.strip().lower() for h in next(csv.reader([text.splitlines()[0] if text.strip() else ""]), [])}
    if "verse_id" in header:
        return "verse-wide"
    if {"patient_id", "vertebra", "genant_grade"} <= header:
        return "manifest"
    if {"scan", "level"} <= header and header & {"grade", "fracture"}:
        return "long"
    raise InputError(f"{path}: not a known label format (columns {sorted(header)[:8]}); "
                     f"see `latentstore labels import --help`")


def _grade(value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"grade {value!r} is not 0-3")
    g = float(value)
    if not g.is_integer() or not 0 <= g <= 3:
        raise ValueError(f"grade {value!r} outside 0-3")
    return int(g)


def _fracture(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "y", "t"):
        return True
    if v in ("0", "false", "no", "n", "f"):
        return False
    raise ValueError(f"fracture {value!r} is not 0/1/true/false")


def _level(value) -> int:
    v = str(value).strip()
    return level_label(v) if v and not v.lstrip("-").replace(".", "", 1).isdigit() else strict_label(v)


def _scan(value: str) -> str:
    v = str(value).strip()
    if not v:
        raise ValueError("empty scan name")
    return v


def _long(text: str) -> tuple[list[LabelRow], list[str]]:
    rows, rejects = [], []
    reader = csv.DictReader(text.splitlines())
    for line, r in enumerate(reader, start=2):
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()}
        try:
            grade = _grade(r["grade"]) if r.get("grade") not in (None, "") else None
            fracture = _fracture(r["fracture"]) if r.get("fracture") not in (None, "") else None
            if grade is None and fracture is None:
                raise ValueError("neither grade nor fracture")
            hl = r.get("height_loss")
            rows.append(LabelRow(_scan(r.get("scan", "")), _level(r.get("level", "")), grade,
                                 fracture if fracture is not None else grade >= 1, line,
                                 float(hl) if hl not in (None, "") else None, r.get("split") or None))
        except (ValueError, InputError) as e:
            rejects.append(f"line {line}: {e}")
    return rows, rejects


def _manifest(text: str) -> tuple[list[LabelRow], list[str]]:
    rows, rejects = [], []
    for line, r in enumerate(csv.DictReader(text.splitlines()), start=2):
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()}
        try:
            grade = _grade(r.get("genant_grade", ""))
            rows.append(LabelRow(_scan(r.get("patient_id", "")), _level(r.get("vertebra", "")), grade, grade >= 1, line,
                                 split=r.get("split") or None))
        except (ValueError, InputError) as e:
            rejects.append(f"line {line}: {e}")
    return rows, rejects


_WIDE_COL = re.compile(r"^([A-Za-z]+\d*)_fx-g$")


def _verse_wide(text: str) -> tuple[list[LabelRow], list[str]]:
    rows, rejects = [], []
    reader = csv.DictReader(text.splitlines())
    for line, r in enumerate(reader, start=2):
        vid = (r.get("verse_ID") or r.get("verse_id") or "").strip()
        if not vid:
            rejects.append(f"line {line}: empty verse_ID")
            continue
        scan = vid if vid.startswith("sub-") else f"sub-{vid}"
        for col, value in r.items():
            m = _WIDE_COL.match((col or "").strip())
            value = (value or "").strip()
            if not m or value.lower() in ("", "x", "nan"):
                continue  # x: the level is not visible in the scan
            try:
                grade = _grade(value)
                rows.append(LabelRow(scan, level_label(m[1]), grade, grade >= 1, line))
            except (ValueError, InputError) as e:
                rejects.append(f"line {line}, {col}: {e}")
    return rows, rejects


def _grades_json(text: str) -> tuple[list[LabelRow], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"label file is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise InputError("grades JSON must be {split: {scan_label: grade}}")
    rows, rejects, n = [], [], 0
    for split, entries in data.items():
        if not isinstance(entries, dict):
            rejects.append(f"entry {split!r}: not an object of scan_label: grade")
            continue
        for key, value in entries.items():
            n += 1
            try:
                scan, _, label = str(key).rpartition("_")
                grade = _grade(value)
                rows.append(LabelRow(_scan(scan), strict_label(label), grade, grade >= 1, n, split=str(split)))
            except (ValueError, InputError) as e:
                rejects.append(f"entry {n} ({key}): {e}")
    return rows, rejects


_READERS = {"long": _long, "manifest": _manifest, "verse-wide": _verse_wide, "grades-json": _grades_json}


# -- matching and storing ---------------------------------------------------------------------------------


def _stored_scans(st: Store) -> tuple[set[tuple[str, int]], dict[str, set[str]]]:
    """(scan_id, level) pairs of the store's slices, and patient_key -> scan_ids."""
    if not st.slices.parts():
        return set(), {}
    t = st.slices.read(columns=["scan_id", "patient_key", "level"])
    pairs = set(zip(t.column("scan_id").to_pylist(), t.column("level").to_pylist()))
    by_patient: dict[str, set[str]] = {}
    for scan, key in zip(t.column("scan_id").to_pylist(), t.column("patient_key").to_pylist()):
        by_patient.setdefault(key, set()).add(scan)
    return pairs, by_patient


def import_labels(store: Store | str | None, path: str | os.PathLike, fmt: str | None = None,
                  source: str | None = None) -> ImportSummary:
    """Read `path`, match its scans to the store's pseudonyms, store the rows as the source's current labels."""
    from .ingest.privacy import SITE as NAME, known_sites, pseudonym
    from .store import patient_key

    st = connect(store)
    path = Path(path)
    fmt, rows, rejects = read_labels(path, fmt)
    source = source or path.name.split(".")[0]
    if not NAME.match(source):
        raise InputError(f"--source {source!r}: use 1-64 letters, digits, '.', '_' or '-'")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    summary = ImportSummary(source=source, format=fmt, file_sha256=digest, rows_read=len(rows) + len(rejects))
    salt = st.existing_salt()
    sites = sorted(known_sites(st)) if salt is not None else []
    if not sites:
        raise StoreError(f"{st.root} has no ingested scans yet: labels are matched to scans under the store's "
                         "salt and site, so ingest the archive first")
    pairs, by_patient = _stored_scans(st)
    stored_scans = {s for s, _ in pairs}
    out: dict[tuple[str, int], tuple] = {}
    unmatched: set[str] = set()
    for r in rows:
        ids = [pseudonym("scan", r.scan, salt, site) for site in sites]
        hits = [i for i in ids if i in stored_scans]
        if not hits:  # a label set may name the patient (BIDS subject) where the store has sub-X_dir-ax etc.
            hits = sorted({s for site in sites for s in by_patient.get(patient_key(r.scan, salt, site), ())})
        if not hits:
            if len(sites) > 1:
                rejects.append(f"line {r.line}: scan {r.scan!r} is not in the store, which holds several sites")
                continue
            unmatched.add(r.scan)
            hits = ids
        for scan_id in hits:
            if (scan_id, r.level) in out:
                rejects.append(f"line {r.line}: a second label for {r.scan} {NAMES[r.level]} (first kept)")
                continue
            out[(scan_id, r.level)] = (scan_id, r.level, NAMES[r.level], r.grade, r.fracture, r.height_loss, r.split, r.line)
    summary.rejected, summary.rejects = len(rejects), rejects[:MAX_REJECTS_KEPT]
    summary.unmatched_scans = len(unmatched)
    summary.matched = sum(1 for key in out if key in pairs)
    with catalog.writer(st) as con:
        current = con.execute("SELECT arg_max(file_sha256, imported_at) FROM label_imports WHERE source = ?", [source]).fetchone()
        if current and current[0] == digest:
            return summary  # the source's current file again: nothing to do
        import_id = catalog.new_run_id("labels")
        con.executemany(
            "INSERT INTO label_rows (import_id, source, scan_id, level, level_name, grade, fracture, height_loss, split, line) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [[import_id, source, *v] for v in out.values()],
        )
        con.execute("INSERT INTO label_imports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [import_id, source, fmt, digest, catalog.utcnow(), len(out), summary.matched, len(rejects),
                     json.dumps(rejects[:MAX_REJECTS_KEPT])])
    summary.import_id, summary.rows = import_id, len(out)
    return summary


def current_labels(store: Store | str | None, source: str | None = None):
    """The current labels (view `labels`) as Arrow, optionally of one source."""
    st = connect(store)
    where = " WHERE source = ?" if source else ""
    con = catalog.reader(st)
    try:
        return con.sql(f"SELECT * FROM labels{where} ORDER BY scan_id, level", params=[source] if source else None).to_arrow_table()
    finally:
        con.close()
