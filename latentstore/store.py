"""The store: a folder or an object-store URI holding slices, latents, indices, models and the catalog.

Layout (DESIGN section 4): `slices/`, `latents/model_id=<id>/`, `index/`, `models/<model_id>/`,
`catalog.duckdb`. Paths are resolved once here so that every stage agrees on them.

The `slices/` dataset is one Parquet part file per scan, named by the hash of the scan's content and
the slicing parameters (`part_name`). Workers write a part into `slices/_staging/<run_id>/`; the run's
driver then renames it into `slices/`. A rename is atomic on a local or POSIX shared filesystem, so a
reader sees a part completely or not at all; readers (pyarrow datasets, DuckDB `slices/*.parquet`)
skip `_staging/` because its name starts with `_`. Because the name is a pure function of what is in
the file, a rerun finds the part already published and never writes it twice.

Patient identifiers are stored only as `patient_key`: HMAC-SHA256 of the identifier under a secret
per-store salt (`Store.salt`). See `Store.salt` for where the salt lives and what it protects.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import StoreError

ENV_VAR = "LATENTSTORE_STORE"
DEFAULT_STORE = "./latentstore-store"
SALT_ENV = "LATENTSTORE_SALT"

SLICES = "slices"
STAGING = "_staging"
PART_SUFFIX = ".parquet"

# Parquet settings for slice parts. A part holds one scan (~25 rows of 18 KiB images), so a part is one
# row group; the image column gains ~7 % from byte-stream-split under zstd and nothing from a dictionary
# (measured on phantom slices), the string columns repeat one value per part and compress to nothing
# with a dictionary.
PARQUET_OPTIONS = dict(
    compression="zstd",
    use_dictionary=["scan_id", "patient_key", "level_name", "source_uri", "source_format", "content_hash", "slicing", "slicing_hash"],
    use_byte_stream_split=["image.list.element"],
    row_group_size=4096,
    write_statistics=["slice_id", "level", "scan_id", "content_hash"],
)


def resolve_store(store: str | os.PathLike | None = None) -> str:
    """The store location: `store` if given, else `$LATENTSTORE_STORE`, else `./latentstore-store`.

    Local paths come back absolute; URIs (`s3://bucket/prefix`) come back unchanged.
    """
    value = str(store) if store else os.environ.get(ENV_VAR) or DEFAULT_STORE
    if "://" in value and not value.startswith("file://"):
        return value
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


def part_name(content_hash: str, slicing_hash: str) -> str:
    """File name of the part holding one scan's slices: a pure function of content and slicing."""
    digest = hashlib.sha256(f"{content_hash}\0{slicing_hash}".encode()).hexdigest()
    return f"part-{digest[:32]}{PART_SUFFIX}"


def slice_id(content_hash: str, level: int, slicing_hash: str) -> int:
    """Stable 63-bit id of one slice (non-negative int64, so it is also a valid FAISS id)."""
    digest = hashlib.sha256(f"{content_hash}\0{int(level)}\0{slicing_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def patient_key(patient: str, salt: bytes) -> str:
    """HMAC-SHA256 of a raw patient identifier (whitespace-trimmed) under the store's salt, hex."""
    return hmac.new(salt, patient.strip().encode(), hashlib.sha256).hexdigest()


class Store:
    """An opened store: its filesystem (`pyarrow.fs`, so an object-store URI can serve later) and paths.

    Args:
        root: a folder or URI; resolved with `resolve_store` (None means the default store).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = resolve_store(root)
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.root if "://" in self.root else Path(self.root).as_uri())
        except (pa.ArrowInvalid, OSError) as e:
            raise StoreError(f"cannot open store {self.root}: {e}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def path(self, *parts: str) -> str:
        """A path inside the store, in the store filesystem's own form."""
        return "/".join([self.base.rstrip("/"), *parts])

    def local_path(self, *parts: str) -> Path:
        """A local path inside the store; the catalog, locks and the salt file need one."""
        if not self.local:
            raise StoreError(
                f"{self.root}: the catalog, locks and salt need a local or mounted store folder; "
                "object-store URIs serve Parquet only so far"
            )
        return Path(self.path(*parts))

    # -- slices parts -------------------------------------------------------------------------------

    @property
    def slices_dir(self) -> str:
        return self.path(SLICES)

    def staging_dir(self, run_id: str) -> str:
        return self.path(SLICES, STAGING, run_id)

    def published_parts(self) -> list[str]:
        """Names of the published part files in `slices/` (never anything under `_staging/`)."""
        selector = pafs.FileSelector(self.slices_dir, allow_not_found=True, recursive=False)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(PART_SUFFIX) and not info.base_name.startswith(("_", "."))
        )

    def has_part(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(SLICES, name)).type == pafs.FileType.File

    def write_staged(self, table: pa.Table, run_id: str, name: str) -> str:
        """Write `table` as part `name` into this run's staging folder; return its path.

        On a local store the file is fsynced, so the rename that publishes it can never expose a file
        whose bytes are still only in the page cache when the machine goes down.
        """
        folder = self.staging_dir(run_id)
        self.fs.create_dir(folder, recursive=True)
        path = f"{folder}/{name}"
        with self.fs.open_output_stream(path) as sink:
            pq.write_table(table, sink, **PARQUET_OPTIONS)
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return path

    def publish(self, run_id: str, name: str) -> bool:
        """Move staged part `name` of `run_id` into `slices/`; False (and the staged copy dropped) when a
        part of that name is already published.

        Only one ingest driver publishes at a time (it holds the `ingest` lock), so the existence check
        and the rename cannot race with another publisher.
        """
        src, dst = f"{self.staging_dir(run_id)}/{name}", self.path(SLICES, name)
        if self.has_part(name):
            self.fs.delete_file(src)
            return False
        self.fs.move(src, dst)
        if self.local:
            _fsync_dir(self.slices_dir)
        return True

    def discard_staged(self, run_id: str, name: str) -> None:
        """Drop one staged part (a duplicate, or a part of a failed publish)."""
        try:
            self.fs.delete_file(f"{self.staging_dir(run_id)}/{name}")
        except FileNotFoundError:
            pass

    def clear_staging(self, run_id: str | None = None) -> int:
        """Delete the staging folder of `run_id`, or of every run (leftovers of crashed runs); return how
        many staged files were dropped. Call it only while holding the `ingest` lock."""
        folder = self.staging_dir(run_id) if run_id else self.path(SLICES, STAGING)
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True))
        dropped = sum(info.type == pafs.FileType.File for info in infos)
        if self.fs.get_file_info(folder).type == pafs.FileType.Directory:
            self.fs.delete_dir(folder)
        return dropped

    # -- locks and the patient salt -------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str, timeout_s: float = 0.0) -> Iterator[None]:
        """Hold the exclusive file lock `<store>/<name>.lock` (fcntl) for the `with` block.

        `timeout_s=0` fails at once when another process holds it; the lock dies with its process, so a
        killed run never leaves the store locked.
        """
        path = self.local_path(f"{name}.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot use {path.parent} as a store: {e.strerror or e}") from None
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(f"{path} is held by another process (another {name} running?)") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def salt(self) -> bytes:
        """The secret salt under which patient identifiers are hashed into `patient_key`.

        `$LATENTSTORE_SALT` when set (a cluster can mount it from a secret manager), else the file
        `<store>/salt`, created on first use with 32 random bytes and mode 0600.

        What it means for privacy: a patient key is HMAC-SHA256(salt, identifier). Without the salt,
        nobody can test a guessed identifier (MRNs are short and guessable) against the store; whoever
        can read the salt can. So the salt file is readable by the store's owner only, is never copied
        into Parquet, the catalog or logs, and must be kept out of exports of the store. It must also
        never change: the same patient must get the same key in every run, or scans of one patient
        stop being linked. A fingerprint of the salt (`salt.id`, safe to share) catches a changed
        salt (e.g. a different `$LATENTSTORE_SALT`) before anything is written with it.
        """
        env = os.environ.get(SALT_ENV)
        if env:
            salt = env.encode()
        else:
            path = self.local_path("salt")
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".salt.{os.getpid()}.{secrets.token_hex(4)}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)  # atomic and never overwrites: two first runs agree on one salt
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink()
            if path.stat().st_mode & 0o077:
                raise StoreError(f"{path} is readable by other users; run `chmod 600 {path}`")
            salt = path.read_bytes().strip()
            if len(salt) < 32:
                raise StoreError(f"{path} is shorter than 32 characters; it is not a salt this store wrote")
        self._check_salt(salt)
        return salt

    def _check_salt(self, salt: bytes) -> None:
        fingerprint = hmac.new(salt, b"latentstore salt fingerprint", hashlib.sha256).hexdigest()[:16]
        path = self.path("salt.id")
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as f:
                known = f.read().decode().strip()
            if known != fingerprint:
                raise StoreError(
                    f"the patient salt differs from the one {self.root} was created with (salt.id); "
                    f"check ${SALT_ENV} or <store>/salt, or patient keys will not match earlier runs"
                )
            return
        self.fs.create_dir(self.base, recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(fingerprint.encode() + b"\n")


def _fsync_dir(path: str) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
