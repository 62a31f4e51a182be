"""Make a synthetic archive: plan, rasterise and write one patient at a time, in worker processes.

A worker holds one patient's volumes at a time and hands back only small table rows, which the parent
appends to the CSV tables in patient order; so memory does not grow with the patient count and the
files do not depend on the number of workers.

Output folder policy: OUT must be absent, empty, or a previous synth archive (it has our
`manifest.json`). A previous archive's patients and tables are removed first, so a smaller rerun leaves
no stale scans. Any other non-empty folder is refused unless `force=True`; even then only what this
tool writes (`rawdata|derivatives|dicom/sub-synth*`, the tables, sheets, manifest, README) is replaced.
`manifest.json` is written first with `"complete": false` and rewritten at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import __version__
from ..errors import InputError
from ..progress import Bar
from ..result import Result
from ..levels import level_range
from .config import FORMAT_VERSION, SynthConfig, parse_prevalence
from .dicom import write_dicom
from .patient import plan_patient
from .phantom import rasterise
from .sheet import contact_sheets, preview
from .write import Tables, grade_levels, gt_rows, scan_row, write_verse

TOOL = "latentstore synth"
SPLITS = ("train", "val", "test")
_OURS = ["ground_truth.csv", "grades.csv", "scans.csv", "manifest.json", "README.md"]


class SynthSummary(dict, Result):
    """What `synth_archive` returns: a dict (patients, vertebrae, grades, splits, seconds, sheets, ...) that
    renders itself as the CLI's table."""

    def to_dict(self) -> dict:
        return dict(self)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table("patients", "vertebrae", "G0", "G1", "G2", "G3", "train/val/test", "seconds",
                      title=f"synth: {self['out']} (seed {self['seed']})")
        g, sp = self["grades"], self["splits"]
        table.add_row(str(self["patients"]), str(self["vertebrae"]), *(str(g[f"G{i}"]) for i in range(4)),
                      f"{sp['train']}/{sp['val']}/{sp['test']}", f"{self['seconds']:.1f}")
        return Group(table, Text(f"contact sheet: {self['sheets'][0] if self['sheets'] else '-'}"))


def synth_archive(
    out: str | Path,
    patients: int = 20,
    seed: int = 0,
    dicom: bool = False,
    levels: str | tuple[int, ...] = "T8-L5",
    prevalence: str | tuple[float, ...] = (0.80, 0.10, 0.07, 0.03),
    boundary: bool = False,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    **options,
) -> dict:
    """Write a synthetic spine CT archive with known Genant grades to `out`; return a summary.

    Args:
        out: output folder (see the module docstring for what may already be there).
        patients, seed, dicom, boundary: as in `SynthConfig`.
        levels: `"T8-L5"` or VerSe labels; prevalence: `"0.8,0.1,0.07,0.03"` or 4 floats.
        workers: processes (default: CPU count, at most the patient count); 1 runs in this process.
        force: write into a non-empty folder that is not a synth archive.
        progress: show a rich progress bar on stderr.
        options: other `SynthConfig` fields (margin, split, min_levels, spacing, max_voxels, sheet).

    Returns a JSON-able dict: out, patients, vertebrae, grades {G0..G3}, shapes, splits, seconds,
    patients_per_second, workers, sheets, seed.
    """
    if isinstance(levels, str):
        levels = tuple(level_range(levels))
    if isinstance(prevalence, str):
        prevalence = parse_prevalence(prevalence)
    cfg = SynthConfig(patients=patients, seed=seed, dicom=dicom, levels=tuple(levels), prevalence=tuple(prevalence),
                      boundary=boundary, **options)
    out = Path(out)
    _prepare(out, force)
    workers = max(1, min(workers or os.cpu_count() or 1, cfg.patients))
    splits = assign_splits(cfg.patients, cfg.seed, cfg.split)
    _manifest(out, cfg, complete=False)
    tables = Tables(out, grade_levels(cfg.levels))
    grades, shapes, previews = Counter(), Counter(), []
    start = time.perf_counter()
    try:
        with _results(cfg, out, splits, workers) as results, Bar("synth", cfg.patients, "patients", enabled=progress) as bar:
            for result in results:
                tables.add(result["gt"], result["scan"])
                grades.update(f"G{r['grade']}" for r in result["gt"])
                shapes.update(r["shape"] for r in result["gt"] if r["grade"])
                if result["preview"]:
                    previews.append(Path(result["preview"]))
                bar.advance()
    finally:
        tables.close()
    sheets = contact_sheets(out, previews, f"latentstore synth seed {cfg.seed}") if cfg.sheet else []
    seconds = time.perf_counter() - start
    summary = SynthSummary({
        "out": str(out), "patients": cfg.patients, "vertebrae": sum(grades.values()),
        "grades": {f"G{g}": grades.get(f"G{g}", 0) for g in range(4)}, "shapes": dict(sorted(shapes.items())),
        "splits": {s: splits.count(s) for s in SPLITS}, "dicom": cfg.dicom, "seed": cfg.seed,
        "seconds": round(seconds, 2), "patients_per_second": round(cfg.patients / seconds, 3), "workers": workers,
        "sheets": [str(s) for s in sheets],
    })
    _manifest(out, cfg, complete=True, summary=summary)
    _readme(out, cfg)
    return summary


def assign_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> list[str]:
    """Train/val/test per patient: exact counts (rounded fractions), patients shuffled by the seed."""
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    n_val = min(n_val, n - n_train)
    labels = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(n)  # a stream no patient index uses
    out = [""] * n
    for pos, i in enumerate(order):
        out[int(i)] = labels[pos]
    return out


def make_patient(cfg: SynthConfig, out: str, index: int, split: str) -> dict:
    """Plan, rasterise and write patient `index`; returns its table rows (the volumes are dropped)."""
    out_path = Path(out)
    p = plan_patient(cfg, index)
    vols = rasterise(p, cfg.seed)
    info = write_verse(out_path, p, vols)
    if cfg.dicom:
        write_dicom(out_path, p, vols, cfg.seed)
    if cfg.sheet:
        preview(p, vols, info["paths"]["preview"], split)
    return {"gt": gt_rows(p, vols, split), "scan": scan_row(p, split, info["shape"]),
            "preview": str(info["paths"]["preview"]) if cfg.sheet else None}


@contextmanager
def _results(cfg: SynthConfig, out: Path, splits: list[str], workers: int) -> Iterator[Iterator[dict]]:
    """Patient results in patient order, made here (workers=1) or by a process pool."""
    args = [(cfg, str(out), i, splits[i]) for i in range(cfg.patients)]
    if workers == 1:
        yield (make_patient(*a) for a in args)
        return
    # fork, not spawn/forkserver: those re-import the caller's __main__, which breaks unguarded scripts.
    # All tasks are submitted (and so all workers forked) here, before the progress bar starts a thread.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        yield pool.map(make_patient, *zip(*args))


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / "manifest.json"
        ours = False
        if manifest.is_file():
            try:
                ours = json.loads(manifest.read_text()).get("tool") == TOOL
            except (json.JSONDecodeError, AttributeError):
                ours = False
        if not ours and not force:
            raise InputError(f"{out} is not empty and is not a synth archive; choose another folder or use --force")
        for top in ("rawdata", "derivatives", "dicom"):
            for sub in sorted((out / top).glob("sub-synth*")) if (out / top).is_dir() else []:
                shutil.rmtree(sub)
        for name in _OURS + [p.name for p in out.glob("contact_sheet*.png")]:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _manifest(out: Path, cfg: SynthConfig, complete: bool, summary: dict | None = None) -> None:
    data = {"tool": TOOL, "format_version": FORMAT_VERSION, "latentstore_version": __version__,
            "complete": complete, "config": cfg.to_json()}
    if summary:
        # No timings: the manifest must be identical for identical seeds.
        data.update({k: summary[k] for k in ("patients", "vertebrae", "grades", "shapes", "splits")})
    (out / "manifest.json").write_text(json.dumps(data, indent=1) + "\n")


def _readme(out: Path, cfg: SynthConfig) -> None:
    c = cfg.to_json()
    losses = ("boundary losses (within 2 % of the thresholds)" if cfg.boundary
              else f"losses at least {cfg.margin:.0%} from the thresholds")
    dicom = ("- `dicom/sub-*/`: the same scans as DICOM studies (localizer, the axial series, a thick decoy series)\n"
             "  and `centroids.json` (body centroids, LPS mm).\n" if cfg.dicom else "")
    (out / "README.md").write_text(f"""# Synthetic spine CT archive (latentstore synth)

Made by `latentstore synth` {__version__} (format {FORMAT_VERSION}) with seed {cfg.seed}, {cfg.patients} patients,
levels {c['levels']}, prevalence G0-G3 {', '.join(f'{x:.3g}' for x in cfg.prevalence)},
{losses}.
Every parameter is in `manifest.json`; the same seed and parameters make the same files.

- `rawdata/sub-*/sub-*_ct.nii.gz`: CT, int16 HU, varied spacing and orientation (exact RAS+ affines).
- `derivatives/sub-*/`: `_seg-vert_msk.nii.gz` (VerSe labels), `_seg-subreg_ctd.json` (body centroids,
  voxel coordinates, direction entry first), `_seg-vert_snp.png` (preview).
- `ground_truth.csv`: one row per vertebra: heights Ha/Hm/Hp (mm), losses, grade, shape, split.
- `grades.csv`: VerSe'19-style wide table (`verse_ID`, `<LEVEL>_fx-g`, `<LEVEL>_fx-s`, `x` = not visible).
- `scans.csv`: one row per scan: age, sex, levels, orientation, spacing, acquisition.
{dicom}- `contact_sheet*.png`: mid-sagittal previews with levels and grades.

Column definitions: `latentstore/synth/write.py`; DICOM and sidecar: `latentstore/synth/dicom.py`.
""")
