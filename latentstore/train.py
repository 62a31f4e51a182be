"""Train the diffusion autoencoder on the store's slices, without labels; resumable; registers the EMA model.

DiffAE's recipe (reference/dae.md 1.3, paper Table 5): eps-prediction MSE at uniform t, encoder and UNet
trained jointly, Adam lr 1e-4, gradient-norm clip 1, an EMA of the whole model used for everything
downstream, bf16 autocast on a GPU and fp32 on CPU. Differences, on purpose: no left-right flip (a sagittal
slice is not mirror-symmetric: anterior is always left), and a shorter EMA (see `TrainConfig.ema_decay`).

Run folder (`--out`, default `STORE/runs/train-<config>`):
  train_config.json                      TrainConfig + ModelConfig + Preprocess + data hash (written once)
  log.jsonl                              one line per step: step, loss, grad_norm, seconds
  checkpoints/step_XXXXXXXX/             model / ema / optimizer .safetensors + state.json (atomic rename)
  checkpoints/latest                     name of the newest complete checkpoint
  previews/step_XXXXXXXX.png             originals | reconstructions | samples

Resume is exact: the batch at step s and all noise drawn in step s are functions of (seed, s) alone, so a
run continued from a checkpoint draws what an uninterrupted run would have drawn (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .errors import InputError
from .slicedata import InMemorySlices, Preprocess, SliceArrays, SliceStream, batch_indices  # noqa: F401 (API)
from .pictures import WINDOW_HU
from .progress import Bar
from .result import Result
from .store import Store, connect


@dataclass(frozen=True)
class TrainConfig:
    """One training run; saved with every checkpoint and with the registered model.

    Args:
        config: named model config (`tiny`, `small`, `paper`; see latentstore.model).
        steps: optimizer steps in total (a resumed run stops at the same total).
        batch_size: slices per step (paper: 64).
        lr: Adam learning rate (paper Table 5: 1e-4).
        grad_clip: max global gradient norm (DiffAE: 1.0).
        ema_decay: EMA decay per step. DiffAE's 0.9999 averages over ~10k steps, longer than a CPU run;
            0.999 (~1k steps) suits runs of a few thousand steps. Warm-up min(decay, (1+s)/(10+s)) keeps
            the EMA from being dominated by the random init early on.
        seed: seeds the init, the batch order and the diffusion noise.
        holdout_fraction: share of scans (by hash of scan_id) kept out of training for `eval recon`.
        hu_min, hu_max: CT window mapped to [-1, 1].
        checkpoint_every: steps between checkpoints (the last step always checkpoints).
        preview_every: steps between PNG grids (also one at the last step); 0 = none.
        preview_steps: DDIM steps for preview reconstructions and samples.
        keep_checkpoints: how many recent checkpoints stay on disk.
        ema_warmup: warm the EMA up as min(decay, (1+s)/(10+s)); the paper's recipe has none.
        encoder_lr_scale: the semantic encoder's learning rate as a multiple of `lr` (1 = DiffAE); 0 keeps
            the encoder at its seeded random init and trains the UNet alone to read it ("frozen encoder").
        init_from: a registered model (id or folder) whose weights start the run instead of the seeded
            init, e.g. stage 2 after a frozen-encoder stage 1; the optimizer starts fresh. "" = none.
        latent_prior: weight of InfoDiffusion's MMD prior pulling z_sem towards N(0, I)
            (`diffusion.mmd_to_gaussian`); 0 = DiffAE's plain loss.
        t_sampling: how training timesteps are drawn: `uniform` (DiffAE) or `mid` (a Beta(2, 2) over
            [0, T): fewer of the near-clean t where x_t alone suffices and of the pure-noise t).
    """

    config: str = "tiny"
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    holdout_fraction: float = 0.1
    hu_min: float = WINDOW_HU[0]
    hu_max: float = WINDOW_HU[1]
    checkpoint_every: int = 250
    preview_every: int = 1000
    preview_steps: int = 10
    keep_checkpoints: int = 2
    ema_warmup: bool = True
    encoder_lr_scale: float = 1.0
    t_sampling: str = "uniform"
    latent_prior: float = 0.0
    init_from: str = ""

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "preview_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.t_sampling not in T_SAMPLING:
            raise ValueError(f"t_sampling must be one of {', '.join(T_SAMPLING)}, got {self.t_sampling!r}")
        if self.latent_prior < 0:
            raise ValueError(f"latent_prior must be >= 0, got {self.latent_prior}")
        if not self.encoder_lr_scale >= 0:
            raise ValueError(f"encoder_lr_scale must be >= 0, got {self.encoder_lr_scale}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


T_SAMPLING = ("uniform", "mid")

# Per-config defaults where the config's size calls for another recipe. `paper` is the paper's Table 5:
# batch 64, lr 1e-4, EMA 0.9999 without warm-up, 12 M samples (187,500 steps), bf16 autocast on a GPU.
RECIPES: dict[str, dict] = {
    "paper": dict(batch_size=64, lr=1e-4, ema_decay=0.9999, ema_warmup=False, steps=12_000_000 // 64),
}


def config_defaults(config: str) -> dict:
    """TrainConfig defaults for a named model config (its RECIPES entry over the dataclass defaults)."""
    return {**RECIPES.get(config, {}), "config": config}


# Fields a resumed run may change: they do not alter what is computed, only how long and what is written.
_COSMETIC = {"steps", "checkpoint_every", "preview_every", "preview_steps", "keep_checkpoints"}


@dataclass(frozen=True)
class TrainResult(Result):
    run_dir: Path
    model_dir: Path | None  # STORE/models/<model_id>/ once registered
    model_id: str | None
    step: int
    final_loss: float
    seconds: float

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "model_dir": str(self.model_dir), "run_dir": str(self.run_dir),
                "steps": self.step, "final_loss": self.final_loss, "seconds": round(self.seconds, 1)}

    def __rich__(self) -> str:
        return "\n".join(f"{k:>11}: {v}" for k, v in self.to_dict().items())


# -------------------------------------------------------------------------------------- deterministic draws


def sample_t(kind: str, n: int, device, num_timesteps: int = 1000) -> torch.Tensor:
    """Training timesteps from the global torch RNG (seeded per step): uniform, or `mid` = Beta(2, 2)."""
    if kind == "uniform":
        return torch.randint(0, num_timesteps, (n,)).to(device)
    u = torch.distributions.Beta(2.0, 2.0).sample((n,))
    return (u * num_timesteps).long().clamp(0, num_timesteps - 1).to(device)


def step_seed(seed: int, step: int) -> int:
    """Seed of the global torch RNG in `step` (t, eps, dropout), so no RNG state needs saving."""
    return (seed * 1_000_003 + step) % 2**63


# -------------------------------------------------------------------------------------------- the run folder


def _ckpt_root(run: Path) -> Path:
    return run / "checkpoints"


def latest_checkpoint(run: Path) -> Path | None:
    marker = _ckpt_root(run) / "latest"
    if not marker.is_file():
        return None
    path = _ckpt_root(run) / marker.read_text().strip()
    return path if (path / "state.json").is_file() else None


def save_checkpoint(run: Path, net, ema, opt, step: int, extra: dict, keep: int) -> Path:
    """Write checkpoint `step` into a temp folder, rename it into place, then move the `latest` marker."""
    root = _ckpt_root(run)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = root / f"_tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ckpt.save_tensors(tmp / "model.safetensors", net.state_dict())
    ckpt.save_tensors(tmp / "ema.safetensors", ema.state_dict())
    ckpt.save_optimizer(tmp / "optimizer.safetensors", opt)
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2) + "\n")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    marker = root / "latest"
    (root / "latest.tmp").write_text(name + "\n")
    os.replace(root / "latest.tmp", marker)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines past the checkpoint we resume from (they will be written again, identically)."""
    if log.is_file():
        lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log.write_text("".join(ln + "\n" for ln in lines))


# ------------------------------------------------------------------------------------------------ training


def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int, warmup: bool = True) -> None:
    """ema <- d*ema + (1-d)*net with d = decay, or with warm-up d = min(decay, (1+step)/(10+step)); buffers
    are copied."""
    d = min(decay, (1 + step) / (10 + step)) if warmup else decay
    with torch.no_grad():
        for e, p in zip(ema.parameters(), net.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(ema.buffers(), net.buffers()):
            e.copy_(b)


def train(
    store: Store | str | None,
    cfg: TrainConfig,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    register: bool = True,
    slices: SliceArrays | None = None,
) -> TrainResult:
    """Train (or continue) a run and register its EMA model in `STORE/models/<model_id>/`.

    `slices` overrides reading the store (tests, or callers that already hold the data).
    """
    from .diffusion import mmd_to_gaussian, training_loss
    from .model import DiffusionAutoencoder, ModelConfig

    store = connect(store)
    run = Path(out) if out else default_run_dir(store, cfg.config)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_config = ModelConfig.named(cfg.config)
    pre = Preprocess(cfg.hu_min, cfg.hu_max, image_size=model_config.image_size)
    # streamed from the store (memory flat in the number of slices), or the caller's in-memory slices
    data = InMemorySlices(slices) if slices is not None else SliceStream(store, "train", cfg.holdout_fraction)
    header = {
        "train": asdict(cfg),
        "model": ckpt.config_to_dict(model_config),
        "preprocess": pre.to_dict(),
        "data_hash": data.data_hash,
        "n_train_slices": len(data),
        "store": store.root,
    }

    torch.manual_seed(cfg.seed)  # the init is part of the run, so it is seeded too
    net = DiffusionAutoencoder(model_config).to(device)
    if cfg.init_from:
        start_model = ckpt.load_model(cfg.init_from, store)
        if start_model.model_config != model_config:
            raise InputError(f"--init-from {cfg.init_from}: its model config differs from --config {cfg.config}")
        net.load_state_dict(start_model.net.state_dict())
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if cfg.encoder_lr_scale == 0:
        net.encoder.requires_grad_(False)  # no encoder backward pass at all
    opt = torch.optim.Adam([{"params": net.encoder.parameters(), "lr": cfg.lr * cfg.encoder_lr_scale},
                            {"params": net.unet.parameters(), "lr": cfg.lr}])
    log = run / "log.jsonl"
    start, seconds, loss_value = 0, 0.0, float("nan")

    last = latest_checkpoint(run)
    if resume and last is not None:
        saved = json.loads((run / "train_config.json").read_text())
        mismatch = {k for k in header if k not in ("train", "store") and saved.get(k) != header[k]}
        before = asdict(TrainConfig.from_dict(saved["train"]))  # fields added since the run started take defaults
        mismatch |= {k for k, v in asdict(cfg).items() if k not in _COSMETIC and before[k] != v}
        if mismatch:
            raise InputError(f"--resume: {run} was trained with different {sorted(mismatch)}; use a new --out")
        net.load_state_dict(ckpt.load_tensors(last / "model.safetensors"))
        ema.load_state_dict(ckpt.load_tensors(last / "ema.safetensors"))
        ckpt.load_optimizer(last / "optimizer.safetensors", opt)
        state = json.loads((last / "state.json").read_text())
        start, seconds, loss_value = state["step"], state.get("seconds", 0.0), state.get("loss", float("nan"))
        _trim_log(log, start)
        (run / "train_config.json").write_text(json.dumps(header, indent=2) + "\n")  # steps may have grown
    elif last is not None:
        raise InputError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    else:
        run.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        (run / "train_config.json").write_text(json.dumps(header, indent=2) + "\n")

    # bf16 autocast on a GPU (DiffAE used fp16; bf16 needs no loss scaler); CPU autocast is slower, so fp32.
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    done = start
    net.train()
    with Bar("train", cfg.steps, "steps", enabled=progress, completed=start) as bar, \
            log.open("a", buffering=1) as logf:  # line-buffered: tail -f works
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            x0 = pre.to_model(data.batch(step, cfg.batch_size, cfg.seed)).to(device)
            torch.manual_seed(step_seed(cfg.seed, step))
            with amp:  # eps-MSE: the encoder sees x0, the UNet sees x_t
                z = net.encoder(x0)
                loss = training_loss(net, x0, t=sample_t(cfg.t_sampling, len(x0), device), z_sem=z)
                if cfg.latent_prior:
                    loss = loss + cfg.latent_prior * mmd_to_gaussian(z.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip))
            opt.step()
            ema_update(ema, net, cfg.ema_decay, step, cfg.ema_warmup)
            loss_value = float(loss.detach())
            seconds += time.perf_counter() - t0
            logf.write(json.dumps({"step": step + 1, "loss": loss_value, "grad_norm": grad_norm,
                                   "seconds": round(seconds, 3)}) + "\n")
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                logf.flush()
                extra = {"seconds": seconds, "images_seen": done * cfg.batch_size, "loss": loss_value}
                save_checkpoint(run, net, ema, opt, done, extra, cfg.keep_checkpoints)
            if cfg.preview_every and (done % cfg.preview_every == 0 or done == cfg.steps):
                _preview(run / "previews" / f"step_{done:08d}.png", ema, data.fixed(8), pre, cfg, device)
            bar.update(done, info=f"loss {loss_value:.4f}")

    model_dir = model_id = None
    if register:
        card = _card(cfg, header, done, seconds)
        model_dir = ckpt.register_model(store, ema.state_dict(), model_config, pre, card)
        model_id = model_dir.name
    return TrainResult(run, model_dir, model_id, done, loss_value, seconds)


def _card(cfg: TrainConfig, header: dict, done: int, seconds: float) -> dict:
    return {
        "summary": "Diffusion autoencoder (DiffAE) trained without labels on the store's sagittal CT slices.",
        "weights": "EMA of the whole model (encoder + UNet)",
        "config": cfg.config,
        "steps": done,
        "images_seen": done * cfg.batch_size,
        "data_hash": header["data_hash"],
        "n_train_slices": header["n_train_slices"],
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "train_config": asdict(cfg),
    }


def _preview(path: Path, ema, images: np.ndarray, pre: Preprocess, cfg: TrainConfig, device) -> None:
    """A PNG grid from the EMA model: 8 fixed training slices, their reconstructions, and samples."""
    from .diffusion import decode_random, reconstruct
    from .pictures import save_grid

    x0 = pre.to_model(images).to(device)
    with torch.no_grad():
        rec = reconstruct(ema, x0, cfg.preview_steps)
        gen = decode_random(ema, x0.flip(0), cfg.preview_steps, seed=cfg.seed)
    save_grid([x0, rec, gen], path, labels=["input", "reconstruction", "sample (z of another slice, random x_T)"])


def default_run_dir(store: Store, config: str) -> Path:
    """`STORE/runs/train-<config>`: runs live with the data they train on, not in the current folder."""
    return store.local_path("runs", f"train-{config}")


def steps_for(samples: int | None, steps: int | None, batch_size: int) -> int | None:
    """`--samples N` as a step count (rounded up), or `--steps` unchanged."""
    if samples is not None and steps is not None:
        raise InputError("give --steps or --samples, not both")
    return math.ceil(samples / batch_size) if samples is not None else steps


def run_from_cli(store: Store, overrides: dict, steps=None, samples=None, out=None, resume=False, device=None,
                 progress=True) -> TrainResult:
    """`latentstore train`: options left unset (None) take the defaults, or, with --resume, the run's own."""
    given = {k: v for k, v in overrides.items() if v is not None}
    run = Path(out) if out else default_run_dir(store, given.get("config", TrainConfig.config))
    try:
        if resume and latest_checkpoint(run) is not None:
            base = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text())["train"])
            clash = sorted(k for k, v in given.items() if k not in _COSMETIC and getattr(base, k) != v)
            if clash:
                raise InputError(f"--resume: {run} was started with other {clash}; drop them or use a new --out")
            cfg = replace(base, **given, steps=steps_for(samples, steps, base.batch_size) or base.steps)
        else:
            base = config_defaults(given.get("config", TrainConfig.config))
            merged = {**base, **given}
            default_steps = merged.pop("steps", TrainConfig.steps)
            batch = merged.get("batch_size", TrainConfig.batch_size)
            cfg = TrainConfig(**merged, steps=steps_for(samples, steps, batch) or default_steps)
    except (ValueError, TypeError) as e:
        raise InputError(str(e)) from None
    return train(store, cfg, out=run, resume=resume, device=device, progress=progress)
