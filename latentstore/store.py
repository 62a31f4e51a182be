"""The store: a folder or an object-store URI holding slices, latents, indices, models and the catalog.

`latentstore.connect(path_or_uri)` returns a `Store`, the one object every stage works through. Layout
(DESIGN section 4): `slices/`, `latents/model_id=<id>/`, `index/<model_id>.faiss`, `models/<model_id>/`,
`catalog.duckdb`. Paths are resolved once here so that every stage agrees on them.

Parquet datasets (`store.dataset("slices")`, `store.dataset("latents", model_id=...)`) are folders of
part files. Writers put a part into `<dataset>/_staging/<run_id>/`; the run's driver then renames it into
the dataset folder. A rename is atomic on a local or POSIX shared filesystem, so a reader sees a part
completely or not at all; readers (pyarrow datasets, DuckDB globs) skip `_staging/` because its name
starts with `_`. Slice parts are named by the hash of the scan's content and the slicing parameters
(`part_name`), latent parts by the hash of the slice ids they hold, so a rerun finds a part already
published and never writes it twice.

Patient identifiers are stored only as `patient_key`: HMAC-SHA256 of the identifier under a secret
per-store salt (`Store.salt`). See `Store.salt` for where the salt lives and what it protects.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import StoreError

ENV_VAR = "LATENTSTORE_STORE"
DEFAULT_STORE = "./latentstore-store"
SALT_ENV = "LATENTSTORE_SALT"
CONTROL_ENV = "LATENTSTORE_CONTROL"

SLICES = "slices"
LATENTS = "latents"
MODELS = "models"
INDEX = "index"
STAGING = "_staging"
PART_SUFFIX = ".parquet"

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


def patient_key(patient: str, salt: bytes, site: str = "") -> str:
    """HMAC-SHA256 of the site and a raw patient identifier (whitespace-trimmed) under the store's salt,
    hex: two sites' `sub-001` are two patients."""
    return hmac.new(salt, f"{site}\0{patient.strip()}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    """A Parquet dataset of the store: its folder, DDL table (`schemas/<table>.sql`), Parquet options and,
    for datasets with one folder per model, the Hive partition key (`latents/model_id=<id>/`)."""

    name: str
    parquet: dict
    partition: str | None = None


# Slice parts hold one scan (~25 rows of 18 KiB images), so a part is one row group; the image column gains
# ~7 % from byte-stream-split under zstd and nothing from a dictionary (measured on phantom slices), the
# string columns repeat one value per part and compress to nothing with a dictionary.
SLICES_PARQUET = dict(
    compression="zstd",
    use_dictionary=["scan_id", "patient_key", "site", "level_name", "source_uri", "source_format", "content_hash", "slicing", "slicing_hash"],
    use_byte_stream_split=["image.list.element"],
    row_group_size=4096,
    write_statistics=["slice_id", "level", "scan_id", "content_hash"],
)
# Vectors (DESIGN section 4): zstd, no dictionary, byte-stream-split floats, row groups of up to 64k rows.
LATENTS_PARQUET = dict(
    compression="zstd",
    use_dictionary=False,
    use_byte_stream_split=["z_sem.list.element"],
    row_group_size=65536,
    write_statistics=["slice_id"],
)
DATASETS = {
    SLICES: DatasetSpec(SLICES, SLICES_PARQUET),
    LATENTS: DatasetSpec(LATENTS, LATENTS_PARQUET, partition="model_id"),
}
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Dataset:
    """One Parquet dataset of a store: part files published atomically from a staging folder.

    Args:
        store: the store.
        name: `"slices"` or `"latents"` (see `DATASETS`).
        model_id: the model, for per-model datasets (`latents`).
    """

    def __init__(self, store: "Store", name: str, model_id: str | None = None):
        if name not in DATASETS:
            raise StoreError(f"no dataset {name!r}; the store has {', '.join(DATASETS)}")
        self.store, self.spec = store, DATASETS[name]
        self.name, self.model_id = name, model_id
        if self.spec.partition:
            if not model_id or not MODEL_ID.match(model_id):
                raise StoreError(f"dataset {name!r} needs a model id (letters, digits, _ . -), got {model_id!r}")
            self.rel = f"{name}/{self.spec.partition}={model_id}"
        elif model_id is not None:
            raise StoreError(f"dataset {name!r} is not per model")
        else:
            self.rel = name
        self.dir = store.path(self.rel)

    def __repr__(self) -> str:
        return f"Dataset({self.store.root!r}, {self.rel!r})"

    @property
    def schema(self) -> pa.Schema:
        from .schema import arrow_schema

        return arrow_schema(self.name)

    def staging_dir(self, run_id: str) -> str:
        return f"{self.dir}/{STAGING}/{run_id}"

    def parts(self) -> list[str]:
        """Names of the published part files (never anything under `_staging/`), sorted."""
        selector = pafs.FileSelector(self.dir, allow_not_found=True, recursive=False)
        return sorted(
            info.base_name
            for info in self.store.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(PART_SUFFIX) and not info.base_name.startswith(("_", "."))
        )

    def part_path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def has_part(self, name: str) -> bool:
        return self.store.fs.get_file_info(self.part_path(name)).type == pafs.FileType.File

    def write_staged(self, table: pa.Table, run_id: str, name: str, metadata: dict[str, str] | None = None) -> str:
        """Write `table` as part `name` into this run's staging folder (with `metadata` as Parquet file
        key-value metadata); return its path.

        On a local store the file is fsynced, so the rename that publishes it can never expose a file
        whose bytes are still only in the page cache when the machine goes down.
        """
        folder = self.staging_dir(run_id)
        self.store.fs.create_dir(folder, recursive=True)
        path = f"{folder}/{name}"
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        with self.store.fs.open_output_stream(path) as sink:
            pq.write_table(table, sink, **self.spec.parquet)
        if self.store.local:
            _fsync(path)
        return path

    def publish(self, run_id: str, name: str) -> bool:
        """Move staged part `name` of `run_id` into the dataset; False (and the staged copy dropped) when a
        part of that name is already published.

        Only one driver per dataset publishes at a time (it holds the stage's lock), so the existence check
        and the rename cannot race with another publisher.
        """
        src, dst = f"{self.staging_dir(run_id)}/{name}", self.part_path(name)
        if self.has_part(name):
            self.store.fs.delete_file(src)
            return False
        self.store.fs.move(src, dst)
        if self.store.local:
            _fsync(self.dir)
        return True

    def discard_staged(self, run_id: str, name: str) -> None:
        """Drop one staged part (a duplicate, or a part of a failed publish)."""
        try:
            self.store.fs.delete_file(f"{self.staging_dir(run_id)}/{name}")
        except FileNotFoundError:
            pass

    def clear_staging(self, run_id: str | None = None) -> int:
        """Delete the staging folder of `run_id`, or of every run (leftovers of crashed runs); return how
        many staged files were dropped. Call it only while holding the stage's lock."""
        folder = self.staging_dir(run_id) if run_id else f"{self.dir}/{STAGING}"
        fs = self.store.fs
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True))
        dropped = sum(info.type == pafs.FileType.File for info in infos)
        if fs.get_file_info(folder).type == pafs.FileType.Directory:
            fs.delete_dir(folder)
        return dropped

    def arrow(self):
        """The published parts as a `pyarrow.dataset.Dataset` in the DDL's schema (filter, scan, stream)."""
        import pyarrow.dataset as ds

        # The default ignore prefixes ("_", ".") keep `_staging/` out.
        return ds.dataset([self.part_path(p) for p in self.parts()], filesystem=self.store.fs, format="parquet",
                          schema=self.schema)

    def read(self, columns: list[str] | None = None, filter=None) -> pa.Table:
        """The published rows as one Arrow table (`filter`: a `pyarrow.compute` expression)."""
        return self.arrow().to_table(columns=columns, filter=filter)

    def take(self, key: str, values, columns: list[str]) -> pa.Table:
        """The published rows whose `key` column is in `values`, with `columns` (which must include `key`).

        Reads the wide columns only of the row groups that hold a wanted row: a group whose key statistics
        exclude every value is skipped unread, the key column of the others is read to find the rows. A few
        labelled latents among a million cost a few row groups, where a filtered scan decodes them all.
        """
        import numpy as np

        want = np.unique(np.asarray(values))
        pieces = []
        for name in self.parts():
            with self.store.fs.open_input_file(self.part_path(name)) as f:
                pf = pq.ParquetFile(f)
                for g in range(pf.metadata.num_row_groups):
                    st = pf.metadata.row_group(g).column(pf.schema_arrow.get_field_index(key)).statistics
                    if st is not None and st.has_min_max:
                        if np.searchsorted(want, st.max, side="right") <= np.searchsorted(want, st.min, side="left"):
                            continue
                    keys = pf.read_row_group(g, columns=[key]).column(0).to_numpy()
                    hit = np.flatnonzero(np.isin(keys, want))
                    if len(hit):
                        pieces.append(pf.read_row_group(g, columns=columns).take(pa.array(hit)))
        schema = pa.schema([self.schema.field(c) for c in columns])
        return pa.concat_tables([t.cast(schema) for t in pieces]) if pieces else schema.empty_table()

    def batches(self, columns: list[str] | None = None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """Stream the published rows as record batches of at most `batch_size` rows (memory stays flat)."""
        yield from self.arrow().to_batches(columns=columns, batch_size=batch_size)

    def count(self) -> int:
        return self.arrow().count_rows() if self.parts() else 0

    def metadata(self, name: str) -> dict[str, str]:
        """A published part's Parquet key-value metadata, decoded."""
        with self.store.fs.open_input_file(self.part_path(name)) as f:
            meta = pq.read_metadata(f).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:")}


class Models:
    """The store's model registry `models/<model_id>/` (safetensors + config.json + card)."""

    def __init__(self, store: "Store"):
        self.store = store

    @property
    def dir(self) -> Path:
        return self.store.local_path(MODELS)

    def ids(self) -> list[str]:
        if not self.store.local or not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    def __contains__(self, model_id: str) -> bool:
        return model_id in self.ids()

    def __iter__(self):
        return iter(self.ids())

    def path(self, model_id: str) -> Path:
        return self.dir / model_id


class Store:
    """An opened store: its filesystem (`pyarrow.fs`, so an object-store URI can serve) and its parts.

    Open one with `latentstore.connect(path_or_uri)`; every stage takes it first.

    Args:
        root: a folder or URI; resolved with `resolve_store` (None means the default store).
    """

    def __init__(self, root: str | os.PathLike | None = None, control: str | os.PathLike | None = None):
        self.root = resolve_store(root)
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.root if "://" in self.root else Path(self.root).as_uri())
        except (pa.ArrowInvalid, OSError) as e:
            raise StoreError(f"cannot open store {self.root}: {e}") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.control = Path(self.base) if self.local else control_folder(self.root, control)
        self.models = Models(self)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def path(self, *parts: str) -> str:
        """A path inside the store, in the store filesystem's own form."""
        return "/".join([self.base.rstrip("/"), *parts])

    def local_path(self, *parts: str) -> Path:
        """A path in the store's control folder: the catalog, locks, salt, models, runs and pictures, which
        need a POSIX filesystem (DuckDB's one-writer file, fcntl locks, renames). For a local store that is
        the store folder itself; for an object store see `control_folder`."""
        return self.control.joinpath(*parts)

    # -- datasets -----------------------------------------------------------------------------------

    def dataset(self, name: str, model_id: str | None = None) -> Dataset:
        """`store.dataset("slices")`, `store.dataset("latents", model_id=...)`."""
        return Dataset(self, name, model_id)

    @property
    def slices(self) -> Dataset:
        return self.dataset(SLICES)

    def latents(self, model_id: str) -> Dataset:
        return self.dataset(LATENTS, model_id=model_id)

    def latent_models(self) -> list[str]:
        """Model ids with a latents folder (`latents/model_id=<id>/`)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(LATENTS), allow_not_found=True))
        return sorted(i.base_name.split("=", 1)[1] for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith("model_id="))

    def index_path(self, model_id: str) -> str:
        """`index/<model_id>.faiss` (its JSON sidecar sits beside it)."""
        return self.path(INDEX, f"{model_id}.faiss")

    def search(self, query, k: int = 10, where: str | None = None, model: str | None = None):
        """The `k` nearest stored slices of `query` (a slice id, or a 512-d z_sem array): a `SearchResult`
        (`.rows`, `.to_dict()`); `where` is a SQL predicate over `s` (slices) and `l` (labels)."""
        import numpy as np

        from .search import search

        if isinstance(query, (int, np.integer)):
            return search(self, slice_id=int(query), k=k, where=where, model=model)
        return search(self, vector=np.asarray(query, np.float32), k=k, where=where, model=model)

    @property
    def labels(self) -> pa.Table:
        """The current labels (view `labels`) as Arrow."""
        from .labels import current_labels

        return current_labels(self)

    def sql(self, query: str) -> pa.Table:
        """Read-only SQL over the catalog and the Parquet views, as Arrow (`.to_pandas()` for pandas)."""
        from .sql import query as run

        return run(self, query)

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

    def existing_salt(self) -> bytes | None:
        """The salt when there is one already (`$LATENTSTORE_SALT` or `<store>/salt`), else None;
        creates nothing, so a run can hash with it before it knows it will write."""
        if os.environ.get(SALT_ENV) or self.local_path("salt").exists():
            return self.salt()
        return None

    def salt(self, initial: bytes | None = None) -> bytes:
        """The secret salt under which patient identifiers are hashed into `patient_key`.

        `$LATENTSTORE_SALT` when set (a cluster can mount it from a secret manager), else the file
        `<store>/salt`, created on first use with 32 random bytes (or `initial`) and mode 0600.

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
                    f.write(initial.decode() if initial else secrets.token_hex(32))
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


def _fsync(path: str) -> None:
    # A file's bytes, or a rename inside a folder, are durable only once fsynced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def control_folder(uri: str, control: str | os.PathLike | None = None) -> Path:
    """Where an object-store store keeps what needs a POSIX filesystem (catalog.duckdb, locks, salt, models/,
    runs/, pictures/): `control`, else `$LATENTSTORE_CONTROL`, else `~/.latentstore/control/<hash of the URI>`.

    The Parquet datasets live in the bucket, where every Ray worker reads and writes them; only the driver
    touches the control folder. One machine's default is enough for one driver at a time; drivers on
    several machines must share one control folder (a mounted volume), or each would keep its own catalog
    and salt, and patient keys would not match.
    """
    if control or os.environ.get(CONTROL_ENV):
        return Path(control or os.environ[CONTROL_ENV]).expanduser().resolve()
    bare = uri.split("?", 1)[0]  # endpoint and region options do not name another store
    return Path("~/.latentstore/control").expanduser() / hashlib.sha256(bare.encode()).hexdigest()[:16]


def connect(path_or_uri: str | os.PathLike | None = None, control: str | os.PathLike | None = None) -> Store:
    """Open a store (a folder or `s3://bucket/prefix`; default `$LATENTSTORE_STORE`, else
    `./latentstore-store`), as `duckdb.connect` opens a database. Nothing is written until a stage writes.
    `control`: for an object store, the local folder of its catalog, locks and salt (`control_folder`)."""
    return path_or_uri if isinstance(path_or_uri, Store) else Store(path_or_uri, control)
