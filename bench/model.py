"""Benchmark of the DAE networks and DDIM loops: size, FLOPs, throughput, and the share of the machine's measured
matrix-multiply throughput that they reach.

    python bench/model.py                                   # CPU, 2 threads: tiny and small at batch 1/8/32,
                                                            # paper at batch 1 (8 and 32 take minutes per cell)
    python bench/model.py --configs tiny --json out.json
    python bench/model.py --device cuda --bf16 --batches 1,32,128 --paper-batches 1,32,128

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one image (1 multiply-add = 2 FLOPs; convs,
matmuls and attention; norms and activations are not counted). Attention runs through torch SDPA, which the
counter does not see, so it is counted on MONAI's equivalent einsum path. "% of matmul" divides the FLOP rate a
loop reaches (GFLOPs/img x img/s) by the rate of one large matmul timed in the same run and dtype, so the ratio
survives a noisy shared machine better than the absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Before torch loads OpenMP: on a shared CPU, threads that spin at barriers stall whenever a peer is descheduled.
# Measured on the 2-core dev box under load: a tiny 20-step decode took 3.5-72 s with the default policy and
# 0.8-1.1 s with PASSIVE. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from latentstore import diffusion  # noqa: E402
from latentstore.model import DiffusionAutoencoder, ModelConfig  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, min_time: float, max_reps: int = 5) -> float:
    """Median seconds per call; repeats until `min_time` has passed (at least once). Warm up before calling."""
    times: list[float] = []
    while not times or (sum(times) < min_time and len(times) < max_reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_size(device: torch.device) -> int:
    return 2048 if device.type == "cpu" else 8192


def matmul_gflops(device: torch.device, dtype: torch.dtype, min_time: float) -> float:
    """Measured throughput of one large square matmul (GFLOP/s) - the practical peak the loops are compared to."""
    n = matmul_size(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    return 2 * n**3 / timed(lambda: a @ b, device, min_time, max_reps=20) / 1e9


@contextlib.contextmanager
def counted_attention(model: torch.nn.Module):
    """Route MONAI attention through its einsum path so FlopCounterMode sees it (SDPA is invisible to it)."""
    blocks = [m for m in model.modules() if hasattr(m, "use_flash_attention")]
    for m in blocks:
        m.use_flash_attention = False
    try:
        yield
    finally:
        for m in blocks:
            m.use_flash_attention = True


def gflops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def bench_config(name: str, batches: list[int], args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.named(name)
    model = DiffusionAutoencoder(cfg).to(device).eval()
    # Randomise the zero-initialised layers: a trained model's activations, not an exact-zero shortcut.
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    H = cfg.image_size
    x1 = torch.rand(1, cfg.in_channels, H, H, device=device) * 2 - 1
    with counted_attention(model):
        gf_enc = gflops(lambda: model.encoder(x1))
        z1 = model.encoder(x1).detach()
        gf_unet = gflops(lambda: model(x1, torch.tensor([500], device=device), z1))
    row = {
        "config": name,
        "params_encoder": sum(p.numel() for p in model.encoder.parameters()),
        "params_unet": sum(p.numel() for p in model.unet.parameters()),
        "gflops_encoder": gf_enc,
        "gflops_unet": gf_unet,
        "throughput": [],
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    N = args.steps
    for B in batches:
        # The reference is re-timed next to each row: on a shared machine the load drifts within a run.
        peak = matmul_gflops(device, dtype, args.min_time)
        x = torch.rand(B, cfg.in_channels, H, H, device=device) * 2 - 1
        with autocast:
            z = diffusion.encode(model, x)
            diffusion.decode(model, diffusion.encode_stochastic(model, x, z, steps=1), z, steps=1)  # warm-up
            t_enc = timed(lambda: diffusion.encode(model, x), device, args.min_time, max_reps=20)
            t_inv = timed(lambda: diffusion.encode_stochastic(model, x, z, steps=N), device, args.min_time)
            x_T = diffusion.encode_stochastic(model, x, z, steps=1)
            t_dec = timed(lambda: diffusion.decode(model, x_T, z, steps=N), device, args.min_time)
        enc, inv, dec = B / t_enc, B / t_inv, B / t_dec
        row["throughput"].append({
            "batch": B,
            "matmul_gflops": peak,
            "encode_img_s": enc,
            "invert_img_s": inv,
            "decode_img_s": dec,
            "encode_frac_matmul": gf_enc * enc / peak,
            "decode_frac_matmul": gf_unet * N * dec / peak,
        })
        print(f"  {name} batch {B}: encode {enc:.1f}, invert {inv:.2f}, decode {dec:.2f} img/s", file=sys.stderr)
    if name in args.train_configs:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()
        x = torch.rand(args.train_batch, cfg.in_channels, H, H, device=device) * 2 - 1

        def step() -> None:
            with autocast:
                loss = diffusion.training_loss(model, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        step()  # warm-up: the first steps allocate and pick kernels
        row["train_step_s"] = timed(step, device, args.min_time, max_reps=10)
        row["train_batch"] = args.train_batch
    return row


def markdown(result: dict) -> str:
    m = result["meta"]
    dt = "bf16 autocast" if m["bf16"] else "float32"
    lines = [
        f"Device {m['device']} ({m['device_name']}), {dt}, torch {m['torch']}"
        + (f", {m['threads']} threads, OMP_WAIT_POLICY={m['omp_wait_policy']}" if m["device"] == "cpu" else "")
        + f"; DDIM steps N = {m['steps']}. Matmul = GFLOP/s of a {m['matmul_n']}^2 matmul timed just before each row.",
        "",
        "| config | params encoder | params UNet | GFLOPs/img encoder | GFLOPs/img UNet (one call) "
        f"| train step (Adam, batch {m['train_batch']}) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["configs"]:
        step = f"{r['train_step_s'] * 1000:.0f} ms" if "train_step_s" in r else "-"
        lines.append(
            f"| {r['config']} | {r['params_encoder'] / 1e6:.2f} M | {r['params_unet'] / 1e6:.2f} M "
            f"| {r['gflops_encoder']:.3f} | {r['gflops_unet']:.3f} | {step} |"
        )
    lines += [
        "",
        f"| config | batch | encode img/s | invert (N={m['steps']}) img/s | decode (N={m['steps']}) img/s "
        "| matmul GFLOP/s | encode % of matmul | decode % of matmul |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["configs"]:
        for t in r["throughput"]:
            lines.append(
                f"| {r['config']} | {t['batch']} | {t['encode_img_s']:.1f} | {t['invert_img_s']:.2f} "
                f"| {t['decode_img_s']:.2f} | {t['matmul_gflops']:.0f} | {100 * t['encode_frac_matmul']:.1f} % "
                f"| {100 * t['decode_frac_matmul']:.1f} % |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", default="tiny,small,paper", help="named model configs, comma-separated")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for tiny/small")
    p.add_argument("--paper-batches", default=None, help="batch sizes for paper (default: 1 on CPU, --batches on GPU)")
    p.add_argument("--steps", type=int, default=diffusion.EVAL_STEPS, help="DDIM steps N for invert and decode")
    p.add_argument("--train-configs", default="tiny,small", help="configs whose training step is timed")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (and a bf16 matmul as the reference)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds to repeat each measurement for")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.train_configs = set(filter(None, args.train_configs.split(",")))

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    elif device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    paper_batches = [int(b) for b in args.paper_batches.split(",")] if args.paper_batches else (
        [1] if device.type == "cpu" else batches)

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    result = {
        "meta": {
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__,
            "bf16": args.bf16,
            "steps": args.steps,
            "train_batch": args.train_batch,
            "matmul_n": matmul_size(device),
        },
        "configs": [],
    }
    for name in filter(None, args.configs.split(",")):
        print(f"benchmarking {name} ...", file=sys.stderr)
        result["configs"].append(bench_config(name, paper_batches if name == "paper" else batches, args, device, dtype))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
