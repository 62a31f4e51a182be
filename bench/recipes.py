"""Training recipes against the probe: z_sem probe AUC along each run, per images seen and CPU minutes.

    python bench/recipes.py --train-store TRAIN --probe-store PROBE --labels PROBE_ARCHIVE/ground_truth.csv \\
        --out DIR --images 8000 --every 2000 --threads 1 lr1e-3 lr1e-3-enc0.1

Each recipe trains in DIR/<recipe>/run (resumable: rerun the same command to continue or extend a run) and
is probed every `--every` images on the EMA weights: G0 vs G2/G3 logistic-regression AUC, patient-grouped
5-fold x 3 seeds (latentstore.probe), plus z usage and effective rank. The baselines (untrained network,
8x8 pooled pixels) are probed once, on the same folds. Points go to DIR/<recipe>/curve.jsonl; the table of
all recipes is printed and DIR/curves.png drawn. Training is unsupervised throughout: the labels are read
only by the probe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Recipes: TrainConfig overrides. All use the `small` network unless they say otherwise.
RECIPES: dict[str, dict] = {
    "plain-2e-4": dict(config="small", batch_size=32, lr=2e-4, ema_decay=0.999),
    "lr1e-3": dict(config="small", batch_size=32, lr=1e-3, ema_decay=0.999),
    "lr1e-3-enc0.1": dict(config="small", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.1),
    "lr1e-3-mid-t": dict(config="small", batch_size=32, lr=1e-3, ema_decay=0.999, t_sampling="mid"),
    "lr3e-4-b64": dict(config="small", batch_size=64, lr=3e-4, ema_decay=0.999),
    "cpu48-lr1e-3": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999),
    "cpu48-lr2e-4": dict(config="cpu48", batch_size=32, lr=2e-4, ema_decay=0.999),
    "cpu48-lr1e-3-prior0.1": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, latent_prior=0.1),
    "cpu48-lr1e-3-prior1": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, latent_prior=1.0),
    "cpu48-frozen-enc": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.0),
    "small-frozen-enc": dict(config="small", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.0),
    # stage 2 after the frozen-encoder default (a model id registered in --train-store): the encoder learns
    # against a decoder that already reads z_sem
    "cpu48-stage2-enc0.1": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                                init_from="d5d48b315b732aeb"),
    # stage 3: on from the shipped stage-2 default (192k images), same recipe, fresh optimiser
    "cpu48-stage3-enc0.1": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                                init_from="74587138ca010ec2"),  # shipped at +160k images as ad8f3e12f9115ba0
    # stage 4, for a GPU lease (bench/gpu_train.py): on from stage 3 at 224k images (b7453c91c44929cd, probe
    # 0.902): the same recipe, a 4x batch, and a faster-learning encoder
    "gpu-stage4-b32": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                           init_from="b7453c91c44929cd"),
    "gpu-stage4-b128": dict(config="cpu48", batch_size=128, lr=2e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                            init_from="b7453c91c44929cd"),
    "gpu-stage4-b32-enc0.3": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.3,
                                  init_from="b7453c91c44929cd"),
    "gpu-stage4-b128-enc0.3": dict(config="cpu48", batch_size=128, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.3,
                                   init_from="b7453c91c44929cd"),
    # stage 5, for a GPU lease: on from the shipped stage-4 default (2dbd8f4ed28d30ba, probe 0.916), which
    # wandered 0.900-0.914 at lr 2e-3: a lower rate and longer EMA, a 2x batch, a full-rate encoder
    "gpu-stage5-b128-lr5e-4": dict(config="cpu48", batch_size=128, lr=5e-4, ema_decay=0.9995, encoder_lr_scale=0.1,
                                   init_from="2dbd8f4ed28d30ba"),
    "gpu-stage5-b256-lr1e-3": dict(config="cpu48", batch_size=256, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                                   init_from="2dbd8f4ed28d30ba"),
    "gpu-stage5-b128-lr3e-4-enc1": dict(config="cpu48", batch_size=128, lr=3e-4, ema_decay=0.999,
                                        encoder_lr_scale=1.0, init_from="2dbd8f4ed28d30ba"),
    # for a GPU lease, from scratch at 96 px (cpu48's plateau is ~0.90-0.92): the staged recipe in one process
    # (bench/gpu_train.py `then`): the encoder frozen at its seeded init while the UNet learns to read z_sem,
    # then the encoder at 0.1x the rate
    "gpu-small-staged-b128": dict(config="small", batch_size=128, lr=1e-3, ema_decay=0.999, encoder_lr_scale=0.0,
                                  then=dict(after_images=64000, lr=2e-3, encoder_lr_scale=0.1)),
    "gpu-small-staged-b256": dict(config="small", batch_size=256, lr=2e-3, ema_decay=0.999, encoder_lr_scale=0.0,
                                  then=dict(after_images=64000, lr=2e-3, encoder_lr_scale=0.1)),
    # the same, on from gpu-small-staged-b256 at 465k images (its last EMA, registered as e51922299df370af),
    # fresh Adam
    "gpu-small-stage3-b256": dict(config="small", batch_size=256, lr=2e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                                  init_from="e51922299df370af"),
    # and on from there at 654k images (probe 0.820; registered as 070a7e824f313cf7), for the next lease
    "gpu-small-stage4-b256": dict(config="small", batch_size=256, lr=2e-3, ema_decay=0.999, encoder_lr_scale=0.1,
                                  init_from="070a7e824f313cf7"),
    "paper": dict(config="paper", batch_size=64, lr=1e-4, ema_decay=0.9999, ema_warmup=False),
    "cpu48-lr1e-3-mid-t": dict(config="cpu48", batch_size=32, lr=1e-3, ema_decay=0.999, t_sampling="mid"),
}


def probe_point(net, preprocess, data, seeds=(0, 1, 2)) -> dict:
    from latentstore.probe import detection_probe, encode_images, z_usage, zsem_diagnostics

    det = np.isin(data.grade, (0, 2, 3))
    y = (data.grade[det] >= 2).astype(int)
    z = encode_images(net, preprocess, data.images)
    mean = preprocess.to_model(data.images).mean(dim=(1, 2, 3)).double().numpy()
    p = detection_probe(z[det], y, data.groups[det], "logistic", seeds, 5)
    return {"auc": p["auc"], "auc_sd": p["auc_sd"], **zsem_diagnostics(z, mean),
            **z_usage(net, preprocess, data.images)}


def baselines(out: Path, data, preprocess, config: str) -> dict:
    from latentstore.model import DiffusionAutoencoder, ModelConfig
    from latentstore.probe import detection_probe, pix8_features
    from latentstore.slicedata import Preprocess

    path = out / f"baselines-{config}.json"
    if path.is_file():
        return json.loads(path.read_text())
    det = np.isin(data.grade, (0, 2, 3))
    y = (data.grade[det] >= 2).astype(int)
    torch.manual_seed(0)
    cfg = ModelConfig.named(config)
    untrained = DiffusionAutoencoder(cfg).eval()
    res = {"untrained": probe_point(untrained, Preprocess(image_size=cfg.image_size), data)["auc"],
           "pix8": detection_probe(pix8_features(preprocess, data.images)[det], y, data.groups[det], "logistic",
                                   (0, 1, 2), 5)["auc"]}
    path.write_text(json.dumps(res) + "\n")
    return res


def run_recipe(name: str, args, data) -> list[dict]:
    from latentstore import checkpoint as ckpt
    from latentstore.model import DiffusionAutoencoder, ModelConfig
    from latentstore.slicedata import Preprocess
    from latentstore.train import TrainConfig, latest_checkpoint, train

    over = RECIPES[name]
    if "then" in over:
        raise SystemExit(f"{name} is staged (`then`): bench/gpu_train.py runs it")
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    curve_path = folder / "curve.jsonl"
    curve = [json.loads(ln) for ln in curve_path.read_text().splitlines()] if curve_path.is_file() else []
    batch = over["batch_size"]
    model_config = ModelConfig.named(over["config"])
    pre = Preprocess(image_size=model_config.image_size)
    targets = list(range(args.every, args.images + 1, args.every))
    if not curve:  # the starting point: the seeded init every recipe of this config shares, or init_from
        torch.manual_seed(0)
        net0 = DiffusionAutoencoder(model_config)
        if over.get("init_from"):
            net0 = ckpt.load_model(over["init_from"], str(args.train_store)).net
        curve.append({"recipe": name, "images_seen": 0, "cpu_minutes": 0.0, **probe_point(net0, pre, data)})
        curve_path.write_text(json.dumps(curve[0]) + "\n")
    for images in targets:
        if any(p["images_seen"] == images for p in curve):
            continue
        steps = -(-images // batch)
        cfg = TrainConfig(**over, steps=steps, checkpoint_every=steps, preview_every=0, keep_checkpoints=1)
        t0 = time.process_time()
        result = train(str(args.train_store), cfg, out=folder / "run", resume=True, progress=False,
                       register=False, device=args.device)
        last = latest_checkpoint(folder / "run")
        net = DiffusionAutoencoder(model_config)
        net.load_state_dict(ckpt.load_tensors(last / "ema.safetensors"))
        cpu = time.process_time() - t0
        prev_cpu = curve[-1]["cpu_minutes"] if curve else 0.0
        point = {"recipe": name, "images_seen": result.step * batch, "steps": result.step,
                 "cpu_minutes": round(prev_cpu + cpu / 60, 2), "wall_train_s": round(result.seconds, 1),
                 "loss": result.final_loss, **probe_point(net, pre, data)}
        curve.append(point)
        with curve_path.open("a") as f:
            f.write(json.dumps(point) + "\n")
        print(f"{name}: {point['images_seen']:>6} images, {point['cpu_minutes']:6.1f} CPU min, AUC {point['auc']:.3f}, "
              f"rank {point['effective_rank']:.1f}, z usage x{point['ratio']:.3f}", flush=True)
    return curve


def plot(out: Path, curves: dict[str, list[dict]], base: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, pts in curves.items():
        for ax, key in zip(axes, ("images_seen", "cpu_minutes")):
            ax.plot([p[key] for p in pts], [p["auc"] for p in pts], marker="o", label=name)
    for ax, xlabel in zip(axes, ("images seen", "CPU minutes of training (process time)")):
        for label, v, style in (("8x8 pixels", base["pix8"], "--"), ("untrained net", base["untrained"], ":")):
            ax.axhline(v, color="grey", linestyle=style, label=label)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probe AUC, G0 vs G2/G3 (logistic, grouped 5-fold x 3)")
    axes[1].legend(fontsize=8)
    fig.suptitle("z_sem probe AUC along training, per recipe")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", default=list(RECIPES), help=f"any of {', '.join(RECIPES)}")
    ap.add_argument("--train-store", type=Path, required=True)
    ap.add_argument("--probe-store", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True, help="labels of the probe store (ground_truth.csv)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=8000, help="images to train each recipe on")
    ap.add_argument("--every", type=int, default=2000, help="images between probe points")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (training; the probe encodes on the CPU)")
    args = ap.parse_args(argv)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    torch.set_num_threads(args.threads)
    from latentstore.probe import probe_data
    from latentstore.slicedata import Preprocess

    args.out.mkdir(parents=True, exist_ok=True)
    data = probe_data(str(args.probe_store), args.labels)
    curves = {name: run_recipe(name, args, data) for name in args.recipes}
    configs = {RECIPES[n]["config"] for n in args.recipes}
    base = {c: baselines(args.out, data, Preprocess(), c) for c in configs}
    b = base[next(iter(configs))]
    print(f"\nbaselines on the same folds: pixels {b['pix8']:.3f}, untrained {b['untrained']:.3f}")
    print("| recipe | images seen | CPU min | probe AUC | eff. rank | z usage |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, pts in curves.items():
        for p in pts:
            print(f"| {name} | {p['images_seen']} | {p['cpu_minutes']:.1f} | {p['auc']:.3f} | "
                  f"{p['effective_rank']:.1f} | x{p['ratio']:.3f} |")
    print(f"plot: {plot(args.out, curves, b)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
