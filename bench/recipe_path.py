"""Draw every training path of the default model so far: z_sem probe AUC against images seen.

    python bench/recipe_path.py [--csv docs/figures/recipe-path.csv] [--out docs/figures/recipe-path.png]

The points are the measurements recorded in NOTES.md (issue 8), gathered in one CSV: `bench/recipes.py`
(CPU) and `bench/gpu_train.py` (GPU leases) produce them; this only draws them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=ROOT / "docs/figures/recipe-path.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/figures/recipe-path.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(ln for ln in args.csv.read_text().splitlines() if not ln.startswith("#")))
    paths: dict[str, list[dict]] = {}
    for r in rows:
        paths.setdefault(r["path"], []).append(r)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for name, pts in paths.items():
        gpu = pts[-1]["device"] == "gpu"
        ax.plot([int(p["images_seen"]) / 1e3 for p in pts], [float(p["auc"]) for p in pts], marker="o", ms=3,
                linestyle="--" if gpu and not name.startswith("cpu48 staged") else "-", label=name)
    ax.axhline(0.80, color="grey", linestyle=":", label="8x8 pooled pixels (~0.80)")
    ax.axhline(0.95, color="black", linestyle=":", label="target 0.95")
    ax.set_xlabel("images seen since the seeded init (thousands)")
    ax.set_ylabel("z_sem probe AUC, G0 vs G2/G3")
    ax.set_title("Default-model training paths on the new phantom (cpu48: 48 px; small: 96 px)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
