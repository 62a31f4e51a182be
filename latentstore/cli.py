"""The `latentstore` command line: one thin command per stage over a library function.

Every user-facing failure is a `LatentstoreError`, shown once as a single line with its exit code;
`--debug` shows the traceback instead.
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


class _Group(TyperGroup):
    """Catches the user-facing error family once for every command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LatentstoreError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None  # typer vendors click: its own Exit sets the status


app = typer.Typer(
    cls=_Group,
    name="latentstore",
    help="Grade vertebral fractures on CT through a diffusion autoencoder's semantic latents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Shared options: the same name on every command that uses them.
StoreOpt = Annotated[
    str,
    typer.Option("--store", envvar=ENV_VAR, help=f"Store folder or URI (env {ENV_VAR}).", show_default=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


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


# -- ingest and slices (issue 4) ------------------------------------------------------------------------


@app.command()
def ingest(
    archive: Annotated[Path, typer.Argument(help="Archive folder: NIfTI (VerSe layout) and/or DICOM scans with centroids.")],
    store: StoreOpt = DEFAULT_STORE,
    address: Annotated[
        Optional[str], typer.Option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    ] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Scans processed at once (default: all CPUs).")] = None,
    thickness: Annotated[int, typer.Option("--thickness", help="Sagittal 1 mm planes averaged per slice (odd).")] = 1,
    order: Annotated[int, typer.Option("--order", help="Interpolation order: 0 nearest, 1 linear, 3 cubic.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Cut one 96x96 sagittal slice per vertebra of every new scan in ARCHIVE into the store (Ray tasks).

    Reruns add only new scans. Rejected inputs go to the catalog's errors table (exit status 4); the rest is stored.
    """
    import json

    from .errors import PartialFailure
    from .ingest.run import ingest as run_ingest
    from .ingest.run import summary_table

    from .ingest import SlicingConfig

    try:
        slicing = SlicingConfig(thickness_mm=thickness, order=order)
    except ValueError as e:
        raise InputError(f"bad slicing option: {e}") from None
    summary = run_ingest(archive, store, address=address, workers=workers, slicing=slicing, progress=not json_out)
    if json_out:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        out.print(summary_table(summary))
    if not summary.clean:
        raise PartialFailure(
            f"{summary.errors} input(s) rejected, the rest stored; see "
            f"latentstore sql \"SELECT source, stage, reason FROM errors WHERE run_id = '{summary.run_id}'\""
        )


slices_app = typer.Typer(cls=_Group, help="Stored slices.", no_args_is_help=True)
app.add_typer(slices_app, name="slices")


@slices_app.command("show")
def slices_show(
    slice_id: Annotated[Optional[int], typer.Argument(help="A slice id.")] = None,
    scan: Annotated[Optional[str], typer.Option("--scan", help="Show every slice of this scan id.")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="PNG path (default slice-<id>.png / scan-<scan>.png).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Write a PNG grid of stored slices (bone window, level names) to check the cuts."""
    import json

    from .slices import show

    shown = show(store, slice_id=slice_id, scan=scan, out=out_file)
    if json_out:
        print(json.dumps({"path": str(shown.path), "levels": shown.levels, "slice_ids": shown.slice_ids}))
    else:
        out.print(f"{shown.path}: {len(shown.levels)} slice(s) ({', '.join(shown.levels)})", highlight=False, soft_wrap=True)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help='SQL, e.g. "SELECT stage, reason, count(*) FROM errors GROUP BY ALL".')],
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows shown in the table format.")] = 50,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Read-only SQL over the catalog: tables runs and errors, view slices (Parquet)."""
    from rich.table import Table

    from .sql import query as run_query
    from .sql import render
    from .store import Store

    result = run_query(Store(store), query)
    if fmt != "table":
        print(render(result, fmt))
        return
    table = Table(*result.column_names)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(_cell(v) for v in row.values()))
    out.print(table)
    if result.num_rows > limit:
        out.print(f"({result.num_rows} rows, {limit} shown; --limit or --format csv for all)")


def _cell(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- train and eval recon (issue 5) ---------------------------------------------------------------------


@app.command()
def train(
    config: Annotated[Optional[str], typer.Option("--config", help="Model config: tiny | small | cpu48 | paper (default: tiny).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimizer steps in total (default: 1000).")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", min=1, help="Images to train on (instead of --steps).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Slices per step (default: 16).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate (default: 1e-4).")] = None,
    ema_decay: Annotated[Optional[float], typer.Option("--ema-decay", help="EMA decay per step (default: 0.999).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = None,
    preview_every: Annotated[Optional[int], typer.Option("--preview-every", min=0, help="Steps between preview PNGs.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of init, batch order and noise.")] = None,
    encoder_lr_scale: Annotated[Optional[float], typer.Option("--encoder-lr-scale", help="Encoder learning rate as a multiple of --lr (default: 1).")] = None,
    t_sampling: Annotated[Optional[str], typer.Option("--t-sampling", help="Training timesteps: uniform (DiffAE) | mid (default: uniform).")] = None,
    latent_prior: Annotated[Optional[float], typer.Option("--latent-prior", help="Weight of InfoDiffusion's MMD prior on z_sem towards N(0, I) (default: 0, DiffAE's plain loss).")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Start from a registered model's weights (id or folder) instead of the seeded init.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")] = False,
    run_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: STORE/runs/train-<config>).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu | cuda (default: cuda if available).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Train the diffusion autoencoder on the store's slices (no labels) and register it in models/<model_id>/.

    `--config paper` defaults to the paper's Table 5: batch 64, lr 1e-4, EMA 0.9999 without warm-up,
    12 M samples, bf16 on a GPU.
    """
    import json

    from .train import run_from_cli

    result = run_from_cli(
        dict(config=config, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
             checkpoint_every=checkpoint_every, preview_every=preview_every, encoder_lr_scale=encoder_lr_scale,
             t_sampling=t_sampling, latent_prior=latent_prior, init_from=init_from),
        steps=steps, samples=samples, store=store, out=run_dir, resume=resume, device=device, progress=not json_out,
    )
    summary = {"model_id": result.model_id, "model_dir": str(result.model_dir), "run_dir": str(result.run_dir),
               "steps": result.step, "final_loss": result.final_loss, "seconds": round(result.seconds, 1)}
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            out.print(f"{k:>11}: {v}", highlight=False)


eval_app = typer.Typer(cls=_Group, help="Evaluate a model on the store (the paper's tables).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _eval_output(result: dict, card_key: str, model, store, record: bool, json_out: bool, rows: list[list[str]],
                 title: str) -> bool:
    """Record an eval result in the model's card (`--record`), then print it as JSON (returns True) or as a
    table (returns False: the caller may add lines under it)."""
    import json

    from rich.table import Table

    if record:
        from .checkpoint import resolve_model_dir, update_card

        update_card(resolve_model_dir(model, store), **{card_key: {k: v for k, v in result.items() if k != "grid"}})
    if json_out:
        print(json.dumps(result, indent=2))
        return True
    header, *body = rows
    table = Table(*header, title=title)
    for row in body:
        table.add_row(*row)
    out.print(table)
    return False


@eval_app.command("recon")
def eval_recon(
    model: Annotated[Optional[str], typer.Option("--model", help="Model id, model folder, or the shipped default.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="DDIM steps for inversion and decoding.")] = 20,
    n: Annotated[int, typer.Option("--n", min=2, help="Held-out slices to evaluate.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per forward pass.")] = 16,
    lpips_weights: Annotated[Optional[Path], typer.Option("--lpips-weights", help="Local LPIPS(alex) state dict; no downloads.")] = None,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Reconstruction grid PNG (default: eval-recon.png).")] = None,
    record: Annotated[bool, typer.Option("--record", help="Write the metrics into the model's card.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Reconstruction (MSE, PSNR, SSIM, LPIPS with local weights) and generation (FD, MMD) on held-out slices."""
    from .evaluate import eval_recon as run_eval
    from .evaluate import table1

    result = run_eval(model, store, steps=steps, n=n, batch_size=batch_size, lpips_weights=lpips_weights,
                      grid=grid or "eval-recon.png")
    title = f"eval recon: model {result['model_id']}, {result['n']} held-out slices, DDIM {steps} steps; images on [0, 1]"
    if _eval_output(result, "metrics", model, store, record, json_out, table1(result), title):
        return
    out.print(f"LPIPS: {result['lpips_note']}. {result['generation']['features']}.", highlight=False)
    out.print(f"grid: {result['grid']}", highlight=False)


@eval_app.command("probe")
def eval_probe(
    labels: Annotated[Optional[Path], typer.Option("--labels", help="ground_truth.csv of a synth archive, or a CSV of scan, level, grade[, height_loss].")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model id, model folder, or the shipped default.")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Patient-grouped cross-validation folds.")] = 5,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Split seeds the cross-validation is repeated over.")] = 3,
    record: Annotated[bool, typer.Option("--record", help="Write the probe table into the model's card.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    json_out: JsonOpt = False,
) -> None:
    """Linear probes of fracture detection (G0 vs G2/G3), height loss and level on z_sem, against baselines."""
    from .probe import eval_probe as run_probe
    from .probe import probe_table

    result = run_probe(model, store, labels, seeds=tuple(range(seeds)), k=folds)
    title = (f"eval probe: model {result['model_id']}, {result['n_detection']} G0/G2/G3 slices "
             f"({result['n_fractured']} G2/G3) of {result['n_patients']} patients, {folds}-fold x {seeds} seeds")
    if _eval_output(result, "probe", model, store, record, json_out, probe_table(result), title):
        return
    d = result["diagnostics"]["zsem"]
    out.print(f"z_sem: effective rank {d['effective_rank']:.1f}, top PC {d['top_pc_share']:.0%} of variance "
              f"(R^2 vs mean intensity {d['top_pc_r2_mean_intensity']:.2f}); z usage: eps-MSE own z "
              f"{d['mse_own_z']:.4f} vs shuffled {d['mse_shuffled_z']:.4f} (x{d['ratio']:.3f}); "
              f"{result['seconds']:.0f} s", highlight=False)


# -- synth (issue 3) ------------------------------------------------------------------------------------


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder (absent, empty, or a previous synth archive).")],
    patients: Annotated[int, typer.Option("--patients", help="Number of patients (one scan each).")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed; patient i depends only on (seed, i).")] = 0,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write DICOM studies with a centroid sidecar.")] = False,
    levels: Annotated[str, typer.Option("--levels", help="Levels that may be visible, e.g. T8-L5.")] = "T8-L5",
    prevalence: Annotated[
        str, typer.Option("--prevalence", help="Grade probabilities G0,G1,G2,G3 per vertebra (sum 1).")
    ] = "0.8,0.1,0.07,0.03",
    boundary: Annotated[
        bool, typer.Option("--boundary", help="Height losses within 2 % of the 20/25/40 % thresholds (calibration set).")
    ] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Processes (default: all CPUs).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder that is not a synth archive.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a synthetic spine CT archive with known Genant grades (VerSe layout, optional DICOM).

    Scans, masks and body centroids as in VerSe, ground-truth heights and grades (ground_truth.csv, grades.csv),
    scans.csv, previews and contact_sheet.png. The same seed gives the same files.
    """
    import json

    from .synth import synth_archive

    summary = synth_archive(out_dir, patients=patients, seed=seed, dicom=dicom, levels=levels, prevalence=prevalence,
                            boundary=boundary, workers=workers, force=force, progress=not json_out)
    if json_out:
        print(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    table = Table("patients", "vertebrae", "G0", "G1", "G2", "G3", "train/val/test", "seconds",
                  title=f"synth: {summary['out']} (seed {summary['seed']})")
    g, sp = summary["grades"], summary["splits"]
    table.add_row(str(summary["patients"]), str(summary["vertebrae"]), *(str(g[f"G{i}"]) for i in range(4)),
                  f"{sp['train']}/{sp['val']}/{sp['test']}", f"{summary['seconds']:.1f}")
    out.print(table)
    out.print(f"contact sheet: {summary['sheets'][0] if summary['sheets'] else '-'}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
