"""`SynthConfig`: what a synthetic archive is made from. Checked on construction; bad values raise
`InputError` naming the option, so the CLI shows them as one line."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import InputError
from ..levels import level_name, level_range

FORMAT_VERSION = 2  # bump when the same seed would make different files


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of `synth_archive`.

    Args:
        patients: number of patients (one scan each), >= 1.
        seed: non-negative integer; patient i is drawn from (seed, i) alone.
        dicom: also write each scan as a DICOM study with a centroid sidecar.
        levels: VerSe labels that may be visible, superior to inferior (from `--levels T8-L5`); each
            patient shows a contiguous run of at least `min_levels` of them.
        prevalence: probabilities of Genant grades 0-3 per visible vertebra, summing to 1.
        boundary: put fracture losses within 2 % of the 20/25/40 % thresholds (calibration set)
            instead of `margin` away from them.
        margin: distance of the measured loss from the thresholds in the default mode (< 0.025).
        split: train/val/test fractions of the patients.
        min_levels: fewest visible levels per patient (capped by the range).
        spacing: fixed voxel size (x, y, z) in mm instead of varied acquisitions.
        max_voxels: larger volumes get coarser voxels (same aspect) to bound time and memory.
        sheet: write previews and contact sheets.
    """

    patients: int = 20
    seed: int = 0
    dicom: bool = False
    levels: tuple[int, ...] = field(default_factory=lambda: tuple(level_range("T8-L5")))
    prevalence: tuple[float, float, float, float] = (0.80, 0.10, 0.07, 0.03)
    boundary: bool = False
    margin: float = 0.02
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    min_levels: int = 6
    spacing: tuple[float, float, float] | None = None
    max_voxels: int = 6_000_000
    sheet: bool = True

    def __post_init__(self):
        if not isinstance(self.patients, int) or self.patients < 1:
            raise InputError(f"--patients must be a positive integer, got {self.patients!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"--seed must be a non-negative integer, got {self.seed!r}")
        levels = tuple(int(x) for x in self.levels)
        if not levels or any(lab not in range(1, 25) for lab in levels):
            raise InputError(f"--levels must be VerSe labels 1-24 (C1..L5), got {self.levels!r}")
        if list(levels) != list(range(levels[0], levels[-1] + 1)):
            raise InputError("--levels must be one contiguous superior-to-inferior run, e.g. T8-L5")
        object.__setattr__(self, "levels", levels)
        p = tuple(float(x) for x in self.prevalence)
        if len(p) != 4 or any(not math.isfinite(x) or x < 0 for x in p):
            raise InputError(f"--prevalence needs 4 non-negative numbers for G0,G1,G2,G3, got {self.prevalence!r}")
        if abs(sum(p) - 1.0) > 1e-3:
            raise InputError(f"--prevalence must sum to 1 (G0,G1,G2,G3), got {','.join(map(str, p))} = {sum(p):.4g}")
        object.__setattr__(self, "prevalence", tuple(x / sum(p) for x in p))
        if not 0 <= self.margin < 0.025:
            raise InputError(f"margin must be in [0, 0.025) so that the G1 band is not empty, got {self.margin}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise InputError(f"split must be three non-negative fractions summing to 1, got {self.split!r}")
        if self.min_levels < 1:
            raise InputError(f"min_levels must be >= 1, got {self.min_levels}")
        if self.spacing is not None:
            sp = tuple(float(x) for x in self.spacing)
            if len(sp) != 3 or not all(0.2 <= x <= 5 for x in sp):
                raise InputError(f"spacing must be three voxel sizes in 0.2-5 mm, got {self.spacing!r}")
            object.__setattr__(self, "spacing", sp)

    def to_json(self) -> dict:
        """JSON-able form for the manifest (levels also as names)."""
        d = asdict(self)
        d["levels"] = f"{level_name(self.levels[0])}-{level_name(self.levels[-1])}"
        return d


def parse_prevalence(text: str) -> tuple[float, ...]:
    """`"0.8,0.1,0.07,0.03"` -> floats; `InputError` if it is not 4 numbers."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--prevalence must be 4 comma-separated numbers (G0,G1,G2,G3), got {text!r}") from None
    if len(values) != 4:
        raise InputError(f"--prevalence must be 4 comma-separated numbers (G0,G1,G2,G3), got {text!r}")
    return values
