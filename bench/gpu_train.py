"""Recipes trained side by side on one GPU against a wall-clock budget, probed on the CPU cores as they go.

    python bench/gpu_train.py --export-probe PROBE.npz --probe-store BENCH --labels BENCH_ARCH/ground_truth.csv
    python bench/gpu_train.py --train-store TRAIN --probe-npz PROBE.npz --out DIR --budget 300 \\
        --every 64000 gpu-stage4-b32 gpu-stage4-b128

Made for a short GPU lease. Each recipe (`bench/recipes.py` RECIPES) trains in its own process with
`latentstore.train` (the GPU time-slices them: a 2 M-parameter network at batch 32 leaves an H200 mostly
idle), in segments of `--every` images; after each segment its EMA weights are registered in TRAIN/models and
probed on a CPU worker with `recipes.probe_point` (logistic AUC G0 vs G2/G3, patient-grouped 5-fold x 3, rank,
z usage), the recipe's starting model and 8x8 pixels on the same folds. A recipe stops when one more segment
would overrun `--budget`. DIR/summary.json holds every point; the best model of each recipe is packed as
DIR/best-<recipe>.tar (the model folder) to be copied into a store's `models/` elsewhere.

The first form writes the probe set (labelled benchmark slices) as an npz, so the GPU machine needs only
torch, pyarrow, safetensors, scikit-learn and monai, not the ingest stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from recipes import RECIPES, probe_point  # noqa: E402

_DATA = None  # the probe set, loaded once per probe worker


def export_probe(path: Path, store: Path, labels: Path) -> None:
    from latentstore.probe import probe_data

    d = probe_data(str(store), labels)
    np.savez_compressed(path, images=d.images, slice_id=d.slice_id, groups=d.groups.astype(str), level=d.level,
                        grade=d.grade, height_loss=d.height_loss)
    print(f"{path}: {len(d)} labelled slices, {int((d.grade >= 2).sum())} G2/G3")


def load_probe(path: Path):
    from latentstore.probe import ProbeData

    z = np.load(path, allow_pickle=False)
    return ProbeData(images=z["images"], slice_id=z["slice_id"], groups=z["groups"].astype(object),
                     level=z["level"], grade=z["grade"], height_loss=z["height_loss"])


def _worker_init(probe_npz: str) -> None:
    import torch

    global _DATA
    torch.set_num_threads(1)
    _DATA = load_probe(Path(probe_npz))


def _probe(model_dir: str) -> dict:
    from latentstore import checkpoint as ckpt

    m = ckpt.load_model(model_dir)
    return probe_point(m.net, m.preprocess, _DATA)


def _pixels() -> float:
    from latentstore.probe import detection_probe, pix8_features
    from latentstore.slicedata import Preprocess

    det = np.isin(_DATA.grade, (0, 2, 3))
    y = (_DATA.grade[det] >= 2).astype(int)
    X = pix8_features(Preprocess(), _DATA.images)[det]
    return detection_probe(X, y, _DATA.groups[det], "logistic", (0, 1, 2), 5)["auc"]


def train_segments(name: str, store: Path, out: Path, every: int, deadline: float, device: str) -> None:
    """One recipe, segment by segment, until `deadline` (a time.time()). The first segment is an eighth of
    `every` and measures the rate; later ones are `every` images or what the rate says still fits.

    A recipe with `then` (a dict with `after_images` and TrainConfig overrides) is staged: after that many
    images its EMA weights, registered, start a second run (`init_from`) with the overrides and a fresh
    optimiser; images_seen counts on across the stages."""
    from latentstore.train import TrainConfig, latest_checkpoint, train

    over = dict(RECIPES[name])
    then = over.pop("then", None)
    stage, offset = 1, 0
    if then and (out / name / "run2").exists():
        stage2 = json.loads((out / name / "stage2.json").read_text())
        over, offset, stage = {**over, **stage2["overrides"]}, stage2["offset"], 2
    points = out / name / "points.jsonl"
    while True:
        batch = over["batch_size"]
        run = out / name / ("run" if stage == 1 else "run2")
        last = latest_checkpoint(run)
        step = json.loads((last / "state.json").read_text())["step"] if last else 0
        seg_steps = smallest = max(1, every // batch // 8)
        limit = (then["after_images"] - offset) // batch if stage == 1 and then else None
        while seg_steps >= smallest and (limit is None or step < limit):
            if limit is not None:
                seg_steps = min(seg_steps, limit - step)
            t0 = time.time()
            target = step + seg_steps
            cfg = TrainConfig(**over, steps=target, checkpoint_every=target, preview_every=0, keep_checkpoints=1)
            res = train(str(store), cfg, out=run, resume=True, progress=False, register=True, device=device)
            seg = time.time() - t0
            rate = seg_steps / seg  # steps per second, the segment's overhead (loading, registering) included
            step = target
            with points.open("a") as f:
                f.write(json.dumps({"recipe": name, "stage": stage, "images_seen": offset + step * batch,
                                    "steps": step, "train_s": round(res.seconds, 1),
                                    "segment_wall_s": round(seg, 1),
                                    "images_per_s": round(seg_steps * batch / seg, 1),
                                    "model_dir": str(res.model_dir)}) + "\n")
            print(f"{name}: stage {stage}, {offset + step * batch} images, segment {seg:.1f} s "
                  f"({seg_steps * batch / seg:.0f} img/s)", flush=True)
            seg_steps = min(every // batch, int(rate * (deadline - time.time()) * 0.9))
        if limit is None or step < limit:
            return
        stage1 = [json.loads(ln) for ln in points.read_text().splitlines()]
        overrides = {k: v for k, v in then.items() if k != "after_images"}
        overrides["init_from"] = [p for p in stage1 if p["stage"] == 1][-1]["model_dir"]
        (out / name / "stage2.json").write_text(json.dumps({"overrides": overrides,
                                                            "offset": offset + step * batch}))
        over, offset, stage = {**over, **overrides}, offset + step * batch, 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*")
    ap.add_argument("--export-probe", type=Path, help="write the probe npz here and stop")
    ap.add_argument("--probe-store", type=Path)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--train-store", type=Path)
    ap.add_argument("--probe-npz", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--budget", type=float, default=300, help="seconds of training, all recipes side by side")
    ap.add_argument("--probe-budget", type=float, default=120, help="seconds after training for the last probes")
    ap.add_argument("--every", type=int, default=64000, help="images per segment (one probe point each)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4), help="probe processes")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--_train", help=argparse.SUPPRESS)
    ap.add_argument("--_deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.export_probe:
        export_probe(args.export_probe, args.probe_store, args.labels)
        return 0
    if args._train:
        train_segments(args._train, args.train_store, args.out, args.every, args._deadline, args.device)
        return 0
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown or not args.recipes:
        ap.error(f"name recipes from bench/recipes.py; unknown: {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget
    procs = {}
    for name in args.recipes:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--_train", name, "--_deadline", str(deadline), "--train-store",
               str(args.train_store), "--out", str(args.out), "--every", str(args.every), "--device", args.device]
        procs[name] = subprocess.Popen(cmd, stdout=open(args.out / name / "train.log", "w"), stderr=subprocess.STDOUT)
    pool = ProcessPoolExecutor(args.workers, initializer=_worker_init, initargs=(str(args.probe_npz),))
    futures = {("pixels", 0): pool.submit(_pixels)}
    for name in args.recipes:
        init = RECIPES[name].get("init_from")
        if init and ("init", init) not in futures:
            futures[("init", init)] = pool.submit(_probe, str(args.train_store / "models" / init))
    seen: dict[str, int] = {}
    points: dict[str, dict] = {}
    results: dict = {}

    def poll():
        for name in args.recipes:
            f = args.out / name / "points.jsonl"
            lines = f.read_text().splitlines() if f.is_file() else []
            for ln in lines[seen.get(name, 0):]:
                p = json.loads(ln)
                points[(name, p["images_seen"])] = p
                futures[(name, p["images_seen"])] = pool.submit(_probe, p["model_dir"])
            seen[name] = len(lines)
        for key, fut in futures.items():
            if key not in results and fut.done():
                try:
                    results[key] = fut.result()
                except Exception as e:  # noqa: BLE001 (a failed probe is reported, the rest goes on)
                    results[key] = {"error": repr(e)}
                print(f"probe {key}: {results[key] if key[0] == 'pixels' else results[key].get('auc')}", flush=True)

    while any(p.poll() is None for p in procs.values()):
        poll()
        time.sleep(2)
    trained = time.time()
    poll()
    while len(results) < len(futures) and time.time() < trained + args.probe_budget:
        time.sleep(2)
        poll()
    pool.shutdown(wait=False, cancel_futures=True)
    summary = {"budget_s": args.budget, "train_wall_s": round(trained - start, 1),
               "exit_codes": {n: p.returncode for n, p in procs.items()},
               "pixels_auc": results.get(("pixels", 0)),
               "init": {k[1]: v for k, v in results.items() if k[0] == "init"}, "points": []}
    for (name, images), p in sorted(points.items()):
        summary["points"].append({**p, **results.get((name, images), {"auc": None})})
    for name in args.recipes:
        mine = [p for p in summary["points"] if p["recipe"] == name and p.get("auc") is not None]
        if mine:
            best = max(mine, key=lambda p: p["auc"])
            with tarfile.open(args.out / f"best-{name}.tar", "w") as tar:
                tar.add(best["model_dir"], arcname=Path(best["model_dir"]).name)
            summary.setdefault("best", {})[name] = {k: best[k] for k in ("images_seen", "auc", "model_dir")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("train_wall_s", "exit_codes", "pixels_auc")}))
    for p in summary["points"]:
        print(f"{p['recipe']}: {p['images_seen']} images, {p['images_per_s']} img/s, AUC {p.get('auc')}, "
              f"rank {p.get('effective_rank')}, z usage {p.get('ratio')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
