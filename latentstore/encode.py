"""`latentstore encode`: the store's slices -> `latents/model_id=<id>/` (z_sem per slice), on Ray actors.

Pipeline (Ray Data, DESIGN section 5): `read_parquet` over the slice parts that still lack a latent for
the model (CPU read tasks) -> `map_batches(Encoder, compute=ActorPoolStrategy(size=n))` with the model
loaded once per actor: one actor per GPU (`num_gpus=1`, bf16 on CUDA) when the cluster has GPUs, CPU
actors otherwise, which leave part of the CPUs to the reads (`cluster.actor_pool`) -> the driver streams
the results (`iter_batches`, back-pressured, so memory stays flat) into latent parts of up to
`FILE_ROWS` rows.

Exactly once: every latent part is written into `latents/model_id=<id>/_staging/<run_id>/` and renamed
into place when complete (a killed run leaves no visible partial file; its staging folder is removed by
the next run, which holds the same lock). A part's name is the hash of the slice ids it holds, and a rerun
encodes only the slices without a published latent, so nothing is encoded or stored twice. Ray's own
`write_parquet` appends (a rerun would duplicate rows) and cannot add our file metadata, so the driver
writes. `Encoder` is plain Python (no Ray import): a test can call it on a batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import catalog
from .errors import InputError, StoreError
from .result import Result
from .schema import SLICE_PX
from .store import Store, connect

FILE_ROWS = 65536  # latent rows per part file: one row group of 128 MiB of z_sem (DESIGN: 16k-64k rows)
DEFAULT_BATCH = 64
BATCHES_PER_BLOCK = 4  # rows per Ray block = 4 actor batches: work spreads over the actors, overhead stays small
ACTOR_COLUMN = "_actor"  # per row, where it was encoded (JSON); the driver counts it and drops it


@dataclass
class EncodeSummary(Result):
    """What one encode run did; `to_dict()` is the `--json` output."""

    run_id: str
    model_id: str
    store: str
    slices: int = 0  # slices in the store
    already_encoded: int = 0  # with a latent of this model before the run
    encoded: int = 0
    parts_written: int = 0
    actors: int = 0
    device: str = "cpu"
    batch_size: int = DEFAULT_BATCH
    staging_dropped: int = 0
    placement: dict[str, int] = field(default_factory=dict)  # actor (node, pid, GPU) -> slices it encoded
    seconds: float = 0.0
    slices_per_s: float = 0.0
    status: str = "running"

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(show_header=False, box=None)
        table.add_column(style="bold", min_width=30)
        table.add_column(justify="right")
        for label, value in [("slices in the store", self.slices), ("already encoded", self.already_encoded),
                             ("encoded now", self.encoded), ("latent files written", self.parts_written),
                             ("actors", f"{self.actors} ({self.device})"), ("slices / s", f"{self.slices_per_s:.1f}")]:
            table.add_row(label, str(value))
        return Group(table, Text(f"run {self.run_id}: model {self.model_id}, {self.status}, {self.seconds:.1f} s",
                                 style="dim"))


class Encoder:
    """z_sem for a batch of stored slices: the `map_batches` callable class (model loaded once per actor).

    Args:
        model_dir: the model folder (`models/<id>/` of the store, or the shipped default's).
        threads: torch CPU threads (CPU actors share the machine; None keeps torch's default).
        device: "cuda" or "cpu"; None picks CUDA when this actor sees a GPU. On CUDA it runs in bf16.
    """

    def __init__(self, model_dir: str, threads: int | None = None, device: str | None = None):
        import torch

        from .checkpoint import load_model

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(model_dir, device=self.device)
        # Where this actor runs, reported with every batch (Ray sets both variables in its workers: the
        # raylet's pid names the node, CUDA_VISIBLE_DEVICES the GPU it was given).
        self.where = json.dumps({"node": os.environ.get("RAY_RAYLET_PID", "local"), "pid": os.getpid(),
                                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                 "device": str(self.device)}, sort_keys=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """`slice_id`, `image` (Arrow, as stored) -> `slice_id`, `z_sem` (fixed_size_list<float32>[512])."""
        import torch

        from .diffusion import encode

        ids = batch.column("slice_id").combine_chunks()
        images = batch.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        n = len(ids)
        x = self.model.preprocess.to_model(images.reshape(n, SLICE_PX, SLICE_PX)).to(self.device)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
               else torch.autocast("cpu", enabled=False))
        with torch.inference_mode(), amp:
            z = encode(self.model.net, x).float().cpu().numpy()  # (n, 512)
        return latents_table(ids.to_numpy(), z).append_column(ACTOR_COLUMN, pa.array([self.where] * n))


def latents_table(slice_ids: np.ndarray, z: np.ndarray) -> pa.Table:
    """Rows in the schema of `schemas/latents.sql`."""
    from .schema import arrow_schema

    schema = arrow_schema("latents")
    z = np.ascontiguousarray(z, dtype=np.float32)
    zt = schema.field("z_sem").type
    return pa.Table.from_arrays(
        [pa.array(np.asarray(slice_ids, dtype=np.int64)), pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), type=zt)],
        schema=schema,
    )


def preprocess_hash(preprocess) -> str:
    """sha256 (16 hex) of how slices become model input: latents of two preprocessings never mix."""
    return hashlib.sha256(json.dumps(preprocess.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def latent_part_name(slice_ids: np.ndarray) -> str:
    digest = hashlib.sha256(np.sort(np.asarray(slice_ids, dtype="<i8")).tobytes()).hexdigest()
    return f"part-{digest[:32]}.parquet"


def encoded_ids(store: Store, model_id: str) -> np.ndarray:
    """Slice ids with a published latent of `model_id`."""
    ds = store.latents(model_id)
    if not ds.parts():
        return np.empty(0, np.int64)
    return ds.read(columns=["slice_id"]).column("slice_id").to_numpy()


def encode(
    store: Store | str | None,
    model: str | os.PathLike | None = None,
    address: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    actors: int | None = None,
    progress: bool = True,
) -> EncodeSummary:
    """Encode every slice of `store` without a latent of `model` (id, folder, or None = the shipped default).

    Args:
        store: the store.
        model: the model; its latents go to `latents/model_id=<id>/`.
        address: Ray address; None uses `$RAY_ADDRESS`, else starts a local Ray.
        batch_size: slices per forward pass of an actor.
        actors: actors in the pool (default: one per GPU, else one CPU actor).
        progress: a progress bar on stderr.
    """
    from .checkpoint import load_model_meta

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if actors is not None and actors < 1:
        raise InputError(f"--actors must be at least 1, got {actors}")
    st = connect(store)
    meta = load_model_meta(model, st)
    t0 = time.monotonic()
    with st.lock(f"encode-{meta.model_id}"):
        latents = st.latents(meta.model_id)
        catalog.close_dead_runs(st, "encode")  # dead runs of this model: we hold its lock (others hold theirs)
        # No paths in the run record (they can name people, DESIGN section 6): the model by its id.
        args = {"model_id": meta.model_id, "cluster": bool(address or os.environ.get("RAY_ADDRESS")),
                "batch_size": batch_size, "actors": actors}
        run_id = catalog.start_run(st, "encode", args)
        summary = EncodeSummary(run_id=run_id, model_id=meta.model_id, store=st.root, batch_size=batch_size)
        with catalog.recorded(st, summary, t0, "encoded", "slices_per_s"):
            summary.staging_dropped = latents.clear_staging()
            _encode(st, meta, latents, run_id, address, batch_size, actors, progress, summary)
            latents.clear_staging(run_id)
    return summary


def _todo(st: Store, done: np.ndarray, summary: EncodeSummary) -> tuple[list[tuple[str, int]], np.ndarray]:
    """The slice part files holding slices without a latent, and the ids among them already encoded (a part
    half-covered by the published files of an earlier, killed run)."""
    slices = st.slices
    parts = slices.parts()
    if not parts:
        raise StoreError(f"no slices in {st.root}; run `latentstore ingest ARCHIVE --store {st.root}` first")
    done_set = set(done.tolist())
    todo, partial = [], []
    for name in parts:
        path = slices.part_path(name)
        with st.fs.open_input_file(path) as f:
            ids = pq.read_table(f, columns=["slice_id"]).column("slice_id").to_numpy()
        summary.slices += len(ids)
        have = [i for i in ids.tolist() if i in done_set]
        summary.already_encoded += len(have)
        if len(have) < len(ids):
            todo.append((path, len(ids) - len(have)))
            partial.extend(have)
    return todo, np.asarray(partial, np.int64)


class ReadParts:
    """Read tasks: a group of slice part files -> their `slice_id`, `image` rows, without the ids in `skip`
    (slices a killed run already published). Ray Data's own `read_parquet` pays ~80 ms per file, and a
    store holds one small file per scan; pyarrow reads a group of them in one task at disk speed."""

    def __init__(self, fs, skip: np.ndarray):
        self.fs, self.skip = fs, pa.array(skip, pa.int64())

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        tables = []
        for path in batch.column("path").to_pylist():
            with self.fs.open_input_file(path) as f:
                tables.append(pq.read_table(f, columns=["slice_id", "image"]))
        table = pa.concat_tables(tables)
        if len(self.skip):
            table = table.filter(pc.invert(pc.is_in(table.column("slice_id"), value_set=self.skip)))
        return table


def _encode(st: Store, meta, latents, run_id: str, address, batch_size: int, actors, progress: bool,
            summary: EncodeSummary) -> None:
    from . import cluster
    from .progress import Bar

    todo, partial = _todo(st, encoded_ids(st, meta.model_id), summary)
    remaining = summary.slices - summary.already_encoded
    if not todo:
        return  # nothing new: no Ray start at all
    file_meta = {"model_id": meta.model_id, "preprocess_hash": preprocess_hash(meta.preprocess),
                 "preprocess": json.dumps(meta.preprocess.to_dict(), sort_keys=True), "run_id": run_id}
    # A local Ray gets at least 2 logical CPUs: one actor and the read tasks (on a 1-core machine they share it).
    with cluster.session(address, num_cpus=max(2, os.cpu_count() or 1)), Bar("encode", remaining, "slices", enabled=progress) as bar:
        import ray.data

        res = cluster.resources()
        pool = cluster.actor_pool(int(res["GPU"]), res["CPU"], actors, node_cpus=res["node_CPU"])
        summary.actors, summary.device = pool["size"], "cuda" if pool["num_gpus"] else "cpu"
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts slices; Ray's per-operator bars would interleave
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # One block per group of part files, a few actor batches each: an actor task takes a whole block, so
        # small blocks spread the work over the actors and let results stream back early.
        blocks = min(len(todo), max(pool["size"], -(-remaining // (batch_size * BATCHES_PER_BLOCK))))
        ds = ray.data.from_items([{"path": path} for path, _ in todo], override_num_blocks=blocks)
        ds = ds.map_batches(ReadParts(st.fs, partial), batch_size=None, batch_format="pyarrow", num_cpus=cluster.READ_CPUS)
        ds = ds.map_batches(
            Encoder,
            fn_constructor_kwargs={"model_dir": str(meta.path), "threads": None if pool["num_gpus"] else pool["threads"]},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=pool["compute"],
            num_gpus=pool["num_gpus"],
            num_cpus=pool["num_cpus"],
        )
        pending: list[pa.Table] = []
        rows = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            for where, n in Counter(batch.column(ACTOR_COLUMN).to_pylist()).items():
                summary.placement[where] = summary.placement.get(where, 0) + n
            batch = batch.drop_columns([ACTOR_COLUMN])
            pending.append(batch)
            rows += batch.num_rows
            bar.advance(batch.num_rows, info=f"{summary.parts_written} files")
            if rows >= FILE_ROWS:
                rows = _publish(latents, run_id, pending, file_meta, summary, flush_all=False)
        if pending:
            _publish(latents, run_id, pending, file_meta, summary, flush_all=True)


def _publish(latents, run_id: str, pending: list[pa.Table], file_meta: dict, summary: EncodeSummary,
             flush_all: bool) -> int:
    """Write FILE_ROWS-row parts (all rows when `flush_all`) from `pending` and publish each; keep the rest
    in `pending`; return how many rows are left there."""
    table = pa.concat_tables(pending).combine_chunks()
    pending.clear()
    while table.num_rows >= FILE_ROWS or (flush_all and table.num_rows):
        part, table = table.slice(0, FILE_ROWS), table.slice(FILE_ROWS)
        part = part.sort_by("slice_id")
        name = latent_part_name(part.column("slice_id").to_numpy())
        latents.write_staged(part.cast(latents.schema), run_id, name, metadata=file_meta)
        if latents.publish(run_id, name):
            summary.parts_written += 1
            summary.encoded += part.num_rows
    if table.num_rows:
        pending.append(table)
    return table.num_rows
