"""The `latentstore` command line: one thin command per stage over a library function of the same name.

The store is resolved once per command (`--store`, else `$LATENTSTORE_STORE`, else `./latentstore-store`)
and handed to the stage. Every user-facing failure is a `LatentstoreError`, shown once as a single line
with its exit code; `--debug` shows the traceback instead. Commands are listed in data-flow order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from . import __version__
from .errors import InputError, LatentstoreError
from .store import DEFAULT_STORE, ENV_VAR

err = Console(stderr=True)
out = Console()


EXIT_CODES = """Exit status: 0 done; 2 bad argument or input (nothing written); 3 store problem (missing,
locked, inconsistent); 4 partial (the run finished, some inputs were rejected: see the errors table);
130 interrupted (Ctrl-C; the run is recorded as interrupted). Anything else is a bug: run with --debug."""


class _Group(TyperGroup):
    """Catches the user-facing error family and Ctrl-C once for every command; keeps definition order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(FLOW)}  # data-flow order (DESIGN section 2)
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LatentstoreError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None  # typer vendors click: its own Exit sets the status
        except KeyboardInterrupt:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print("[bold red]interrupted[/]: what was published stays; rerun to continue", highlight=False)
            raise typer.Exit(130) from None


SETTINGS = {"help_option_names": ["-h", "--help"]}
FLOW = ("synth", "ingest", "locate", "slices", "train", "encode", "index", "labels", "search", "fit", "grade", "regrade",
        "sql", "eval")


def _typer(**kw) -> typer.Typer:
    # Plain click help: rich markup would eat "[default: ...]" and show flags as <bool>.
    return typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None, context_settings=SETTINGS, **kw)


app = _typer(name="latentstore", help="Grade vertebral fractures on CT through a diffusion autoencoder's semantic latents.",
             epilog=EXIT_CODES)

# Shared options: the same name on every command that uses them.
StoreOpt = Annotated[
    str,
    typer.Option("--store", envvar=ENV_VAR, metavar="PATH", help=f"Store folder or URI (env {ENV_VAR}).", show_default=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", metavar="ID", help="Model id, model folder, or the shipped default.")]
AddressOpt = Annotated[
    Optional[str], typer.Option("--address", metavar="RAY_ADDRESS", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
]


def _connect(store: str):
    from .store import connect

    return connect(store)


def _emit(result, json_out: bool) -> None:
    from .result import emit

    emit(out, result, json_out)


def _version(value: bool) -> None:
    if value:
        out.print(f"latentstore {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    ctx.obj = {"debug": debug}


# -- synth ---------------------------------------------------------------------------------------------------


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder (absent, empty, or a previous synth archive).")],
    patients: Annotated[int, typer.Option("--patients", metavar="N", help="Number of patients (one scan each).")] = 20,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Seed; patient i depends only on (seed, i).")] = 0,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write DICOM studies with a centroid sidecar.")] = False,
    levels: Annotated[str, typer.Option("--levels", help="Levels that may be visible, e.g. T8-L5.")] = "T8-L5",
    prevalence: Annotated[
        str, typer.Option("--prevalence", help="Grade probabilities G0,G1,G2,G3 per vertebra (sum 1).")
    ] = "0.8,0.1,0.07,0.03",
    boundary: Annotated[
        bool, typer.Option("--boundary", help="Height losses within 2 % of the 20/25/40 % thresholds (calibration set).")
    ] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, metavar="N", help="Processes (default: all CPUs).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder that is not a synth archive.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a synthetic spine CT archive with known Genant grades (VerSe layout, optional DICOM).

    Scans, masks and body centroids as in VerSe, ground-truth heights and grades (ground_truth.csv, grades.csv),
    scans.csv, previews and contact_sheet.png. The same seed gives the same files.
    """
    from .synth import synth_archive

    _emit(synth_archive(out_dir, patients=patients, seed=seed, dicom=dicom, levels=levels, prevalence=prevalence,
                        boundary=boundary, workers=workers, force=force, progress=not json_out), json_out)


# -- ingest, slices --------------------------------------------------------------------------------------------


@app.command()
def ingest(
    archive: Annotated[Path, typer.Argument(help="Archive folder: NIfTI (VerSe layout) and/or DICOM scans with centroids.")],
    store: StoreOpt = DEFAULT_STORE,
    model: Annotated[Optional[str], typer.Option("--model", metavar="ID", help="Then encode the new slices with this model (`default` for the shipped one).")] = None,
    address: AddressOpt = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, metavar="N", help="Scans processed at once (default: all CPUs).")] = None,
    thickness: Annotated[int, typer.Option("--thickness", metavar="MM", help="Sagittal 1 mm planes averaged per slice (odd).")] = 1,
    order: Annotated[int, typer.Option("--order", metavar="K", help="Interpolation order: 0 nearest, 1 linear, 3 cubic.")] = 1,
    site: Annotated[Optional[str], typer.Option("--site", metavar="NAME", help="The archive's site, part of every patient and scan key (default: derived once per archive).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Cut one 96x96 sagittal slice per vertebra of every new scan in ARCHIVE into the store (Ray tasks).

    Reruns add only new scans. Rejected inputs go to the catalog's errors table (exit status 4); the rest is stored.
    No name or path is stored: scans and files are pseudonyms (`latentstore locate` maps one back).
    """
    from .errors import PartialFailure
    from .ingest import SlicingConfig
    from .ingest.run import ingest as run_ingest

    try:
        slicing = SlicingConfig(thickness_mm=thickness, order=order)
    except ValueError as e:
        raise InputError(f"bad slicing option: {e}") from None
    st = _connect(store)
    summary = run_ingest(st, archive, address=address, workers=workers, slicing=slicing, progress=not json_out, site=site)
    encoded = None
    if model is not None:
        from .encode import encode as run_encode

        encoded = run_encode(st, None if model == "default" else model, address=address, progress=not json_out)
    if json_out:
        from .result import to_json

        print(to_json({**summary.to_dict(), **({"encode": encoded.to_dict()} if encoded else {})}))
    else:
        out.print(summary)
        if encoded:
            out.print(encoded)
    if not summary.clean:
        raise PartialFailure(
            f"{summary.errors} input(s) rejected, the rest stored; see "
            f"latentstore sql \"SELECT source, stage, reason FROM errors WHERE run_id = '{summary.run_id}'\""
        )


slices_app = _typer(help="Stored slices.")
app.add_typer(slices_app, name="slices")


@app.command()
def locate(
    pseudonym: Annotated[str, typer.Argument(metavar="PSEUDONYM", help="A scan_id (scan-...) or source (file-...) from the store.")],
    archive: Annotated[Path, typer.Argument(help="The archive it came from.")],
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Find the file behind a pseudonym by recomputing the pseudonyms of ARCHIVE under the store's salt."""
    import json

    from .ingest.privacy import locate as run_locate

    found = run_locate(_connect(store), pseudonym, archive)
    if json_out:
        print(json.dumps(found, indent=2))
    elif found:
        for f in found:
            what = f"file {f['path']}" if "path" in f else f"scan {f['scan']}"
            out.print(f"{f['pseudonym']}  {what}  (site {f['site']})", markup=False, highlight=False)
    if not found:
        raise InputError(f"no file or scan of {archive} has the pseudonym {pseudonym} under this store's salt and sites")


@app.command()
def index(
    model: ModelOpt = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build from scratch instead of adding new latents.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Build or update the FAISS index of a model's latents (exact up to 15k vectors, HNSW above)."""
    from .index import build_index

    _emit(build_index(_connect(store), model, rebuild=rebuild), json_out)


@app.command()
def search(
    slice_id: Annotated[Optional[int], typer.Argument(help="A stored slice id as the query.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", metavar="FILE", help="A 96x96 slice as the query (.npy in HU, or a bone-window PNG), or a CT (.nii.gz) with --centroid.")] = None,
    centroid: Annotated[Optional[str], typer.Option("--centroid", metavar="X,Y,Z", help="With a CT --image: the vertebral-body centroid, world RAS mm.")] = None,
    vector: Annotated[Optional[Path], typer.Option("--vector", metavar="FILE", help="A z_sem vector (.npy, 512 values) as the query.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, metavar="K", help="Neighbours to return.")] = 10,
    where: Annotated[Optional[str], typer.Option("--where", metavar="SQL", help="Predicate over s (slices) and l (labels), e.g. \"l.grade >= 2\".")] = None,
    model: ModelOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", metavar="PNG", help="PNG of the query and its neighbours (default: STORE/pictures/search-<id>.png).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """The k nearest stored vertebrae of a query, with level, scan pseudonym and labels; and a picture."""
    from .search import search as run_search

    xyz = None
    if centroid is not None:
        try:
            xyz = tuple(float(v) for v in centroid.split(","))
            assert len(xyz) == 3
        except (ValueError, AssertionError):
            raise InputError(f"--centroid must be X,Y,Z in mm, got {centroid!r}") from None
    _emit(run_search(_connect(store), slice_id, image, vector, k=k, where=where, model=model,
                     picture=out_file if out_file is not None else True, centroid=xyz), json_out)


@app.command("fit")
def fit_cmd(
    model: ModelOpt = None,
    classifier: Annotated[str, typer.Option("--classifier", help="logistic (the paper's linear layer) or svm.")] = "logistic",
    calibration: Annotated[str, typer.Option("--calibration", help="linear (G0 and G3 means), poly1 or poly3 (G0, G2, G3).")] = "linear",
    labels: Annotated[str, typer.Option("--labels", metavar="SQL", help="Predicate over l (labels) and s (slices) selecting the training labels, e.g. \"l.source = 'verse19'\"; G1 never trains.")] = "TRUE",
    c: Annotated[float, typer.Option("--c", help="Inverse regularisation strength on standardised z_sem.")] = 0.1,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Refits over resampled patients, for each grade's uncertainty.")] = 16,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Fit a fracture hyperplane (G0 vs G2/G3) on labelled latents and calibrate its distance to Genant grades."""
    from .fit import fit

    _emit(fit(_connect(store), model, classifier, calibration, labels, c, bootstrap), json_out)


@app.command("grade")
def grade_cmd(model: ModelOpt = None, store: StoreOpt = DEFAULT_STORE, json_out: JsonOpt = False) -> None:
    """Grade every latent without a grade under the model's current fit (distance, score, uncertainty, OOD)."""
    from .grade import grade

    _emit(grade(_connect(store), model, progress=not json_out), json_out)


@app.command("regrade")
def regrade_cmd(model: ModelOpt = None, store: StoreOpt = DEFAULT_STORE, json_out: JsonOpt = False) -> None:
    """Refit when the labels changed since the last fit, then grade what has no current grade (for schedules)."""
    from .grade import regrade

    _emit(regrade(_connect(store), model, progress=not json_out), json_out)


labels_app = _typer(help="Grade and fracture labels in the catalog.")
app.add_typer(labels_app, name="labels")


@labels_app.command("import")
def labels_import(
    file: Annotated[Path, typer.Argument(help="A VerSe grade table, a grades JSON, a manifest CSV, a long CSV (scan, level, grade/fracture) or a synth ground_truth.csv.")],
    fmt: Annotated[Optional[str], typer.Option("--format", metavar="FMT", help="verse-wide | grades-json | manifest | long (default: told by the content).")] = None,
    source: Annotated[Optional[str], typer.Option("--source", metavar="NAME", help="The label set's name (default: the file's stem); a new file for a source replaces its current labels.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Import labels, matched to stored scans by the archive's names (stored as pseudonyms only).

    Re-importing the same file is a no-op; malformed rows are rejected with their line numbers, the rest kept.
    """
    from .labels import import_labels

    _emit(import_labels(_connect(store), file, fmt, source), json_out)


@labels_app.command("suggest")
def labels_suggest(
    n: Annotated[int, typer.Option("-n", min=1, metavar="N", help="How many vertebrae to suggest.")] = 20,
    model: ModelOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", metavar="PNG", help="PNG of the suggested slices (default: STORE/pictures/suggest-<model>.png).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """The unlabelled vertebrae the current fit is least sure of, spread over z_sem: label these next."""
    from .suggest import suggest

    _emit(suggest(_connect(store), n, model, picture=out_file or True), json_out)


@slices_app.command("show")
def slices_show(
    slice_id: Annotated[Optional[int], typer.Argument(help="A slice id.")] = None,
    scan_id: Annotated[Optional[str], typer.Option("--scan-id", metavar="SCAN_ID", help="Show every slice of this scan (its scan_id, or its name in the archive).")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", metavar="PNG", help="PNG path (default: STORE/pictures/slice-<id>.png or <scan_id>.png).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Write a PNG grid of stored slices (bone window, level names) to check the cuts."""
    from .slices import show

    _emit(show(_connect(store), slice_id=slice_id, scan=scan_id, out=out_file), json_out)


# -- train, encode ------------------------------------------------------------------------------------------

CONFIGS = ("tiny", "small", "cpu48", "paper")  # latentstore.model.NAMED_CONFIGS (a test keeps them equal)


def _check_config(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in CONFIGS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(CONFIGS)}")
    return value


@app.command()
def train(
    config: Annotated[Optional[str], typer.Option("--config", metavar="NAME", callback=_check_config, help="Model config: tiny | small | cpu48 | paper (default: tiny).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, metavar="N", help="Optimizer steps in total (default: 1000).")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", min=1, metavar="N", help="Images to train on (instead of --steps).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="N", help="Slices per step (default: 16).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", metavar="X", help="Adam learning rate (default: 1e-4).")] = None,
    ema_decay: Annotated[Optional[float], typer.Option("--ema-decay", metavar="X", help="EMA decay per step (default: 0.999).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", min=1, metavar="N", help="Steps between checkpoints.")] = None,
    preview_every: Annotated[Optional[int], typer.Option("--preview-every", min=0, metavar="N", help="Steps between preview PNGs.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", metavar="S", help="Seed of init, batch order and noise.")] = None,
    encoder_lr_scale: Annotated[Optional[float], typer.Option("--encoder-lr-scale", metavar="X", help="Encoder learning rate as a multiple of --lr (default: 1).")] = None,
    t_sampling: Annotated[Optional[str], typer.Option("--t-sampling", metavar="KIND", help="Training timesteps: uniform (DiffAE) | mid (default: uniform).")] = None,
    latent_prior: Annotated[Optional[float], typer.Option("--latent-prior", metavar="X", help="Weight of InfoDiffusion's MMD prior on z_sem towards N(0, I) (default: 0, DiffAE's plain loss).")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", metavar="ID", help="Start from a registered model's weights (id or folder) instead of the seeded init.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")] = False,
    run_dir: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Run folder (default: STORE/runs/train-<config>).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", metavar="DEV", help="cpu | cuda (default: cuda if available).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Train the diffusion autoencoder on the store's slices (no labels) and register it in models/<model_id>/.

    `--config paper` defaults to the paper's Table 5: batch 64, lr 1e-4, EMA 0.9999 without warm-up,
    12 M samples, bf16 on a GPU.
    """
    from .train import run_from_cli

    result = run_from_cli(
        _connect(store),
        dict(config=config, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
             checkpoint_every=checkpoint_every, preview_every=preview_every, encoder_lr_scale=encoder_lr_scale,
             t_sampling=t_sampling, latent_prior=latent_prior, init_from=init_from),
        steps=steps, samples=samples, out=run_dir, resume=resume, device=device, progress=not json_out,
    )
    _emit(result, json_out)


@app.command()
def encode(
    model: ModelOpt = None,
    address: AddressOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Slices per forward pass of an actor.")] = 64,
    actors: Annotated[Optional[int], typer.Option("--actors", min=1, metavar="N", help="Encoder actors (default: one per GPU, else one CPU actor).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """z_sem of every slice without a latent of the model, on Ray actors (one per GPU), into latents/model_id=<id>/.

    Reruns encode only what is missing; a killed run leaves no partial file.
    """
    from .encode import encode as run_encode

    _emit(run_encode(_connect(store), model, address=address, batch_size=batch_size, actors=actors,
                     progress=not json_out), json_out)


# -- sql ---------------------------------------------------------------------------------------------------


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help='SQL, e.g. "SELECT stage, reason, count(*) FROM errors GROUP BY ALL".')],
    fmt: Annotated[str, typer.Option("--format", metavar="FMT", help="table | csv | json (one array) | jsonl (one object a line) | parquet (needs --out).")] = "table",
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Rows shown in the table format.")] = 50,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, metavar="S", help="Interrupt the query after S seconds.")] = 60.0,
    out_file: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write the result to FILE (parquet; other formats print).")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Read-only SQL over the catalog: tables runs, errors, label_imports, label_rows; views slices, latents, labels."""
    from .sql import FORMATS, render
    from .sql import query as run_query

    if fmt not in (*FORMATS, "parquet"):
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, parquet; got {fmt!r}")
    if fmt == "parquet" and (out_file is None or out_file.suffix != ".parquet"):
        raise InputError("--format parquet writes a file: give --out FILE.parquet")
    result = run_query(_connect(store), query, timeout_s=timeout)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result, out_file, compression="zstd")
        out.print(f"{result.num_rows} rows -> {out_file}")
        return
    if fmt != "table":
        print(render(result, fmt))
        return
    from rich.table import Table

    table = Table(*result.column_names)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(_cell(v) for v in row.values()))
    out.print(table)
    if result.num_rows > limit:
        out.print(f"({result.num_rows} rows, {limit} shown; --limit or --format csv for all)")


def _cell(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{len(value)} values]"  # an image or a z_sem: a table cannot show it
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- eval --------------------------------------------------------------------------------------------------

eval_app = _typer(help="Evaluate a model on the store (the paper's tables).")
app.add_typer(eval_app, name="eval")


@eval_app.command("recon")
def eval_recon(
    model: ModelOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=1, metavar="N", help="DDIM steps for inversion and decoding.")] = 20,
    n: Annotated[int, typer.Option("--n", min=2, metavar="N", help="Held-out slices to evaluate.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Slices per forward pass.")] = 16,
    lpips_weights: Annotated[Optional[Path], typer.Option("--lpips-weights", metavar="FILE", help="Local LPIPS(alex) state dict; no downloads.")] = None,
    grid: Annotated[Optional[Path], typer.Option("--grid", metavar="PNG", help="Reconstruction grid (default: STORE/pictures/eval-recon-<model_id>.png).")] = None,
    record: Annotated[bool, typer.Option("--record", help="Write the metrics into the model's card.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Reconstruction (MSE, PSNR, SSIM, LPIPS with local weights) and generation (FD, MMD) on held-out slices."""
    from .eval_recon import eval_recon as run_eval

    _emit(run_eval(_connect(store), model, steps=steps, n=n, batch_size=batch_size, lpips_weights=lpips_weights,
                   grid=grid, record=record, progress=not json_out), json_out)


@eval_app.command("probe")
def eval_probe(
    labels: Annotated[Optional[Path], typer.Option("--labels", metavar="FILE", help="ground_truth.csv of a synth archive, or a CSV of scan, level, grade[, height_loss] (default: the catalog's labels).")] = None,
    model: ModelOpt = None,
    folds: Annotated[int, typer.Option("--folds", min=2, metavar="K", help="Patient-grouped cross-validation folds.")] = 5,
    seeds: Annotated[int, typer.Option("--seeds", min=1, metavar="N", help="Split seeds the cross-validation is repeated over.")] = 3,
    record: Annotated[bool, typer.Option("--record", help="Write the probe table into the model's card.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Linear probes of fracture detection (G0 vs G2/G3), height loss and level on z_sem, against baselines."""
    from .probe import eval_probe as run_probe

    _emit(run_probe(_connect(store), model, labels, seeds=tuple(range(seeds)), k=folds, record=record), json_out)


@eval_app.command("grading")
def eval_grading(
    model: ModelOpt = None,
    labels: Annotated[str, typer.Option("--labels", metavar="SQL", help="Predicate over l (labels) and s (slices) selecting the graded vertebrae.")] = "TRUE",
    densenet_steps: Annotated[int, typer.Option("--densenet-steps", min=0, metavar="N", help="Adam steps of the DenseNet121 baseline (0 = skip it).")] = 400,
    out_dir: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Report folder (default: STORE/reports/grading-<model>).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """The paper's Table 2 on a split by patient: probes, hyperplane regressions, DenseNet121, label efficiency."""
    from .eval_grading import eval_grading as run_eval

    _emit(run_eval(_connect(store), model, labels, densenet_steps, out=out_dir, progress=not json_out), json_out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
