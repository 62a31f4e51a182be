"""Noise schedule, training loss and deterministic DDIM (sampling and inversion) for the diffusion autoencoder.

Network-free math in the diffusers style: `ddim_step` and `ddim_invert_step` are small pure functions of a
precomputed `NoiseSchedule`; `encode`, `encode_stochastic` and `decode` are the loops over a model. Conventions
follow the official DiffAE code (Preechakul et al. 2022): T = 1000 linear betas 1e-4..0.02 in float64,
epsilon prediction with an MSE loss and uniform t, DDIM with eta = 0, x0_hat clipped to [-1, 1] with epsilon
re-derived from the clipped x0_hat, alpha_bar = 1 before the first step and alpha_bar = 0 after the last
inversion step. Images are in [-1, 1].

Usage::

    from latentstore import diffusion
    from latentstore.model import DiffusionAutoencoder, ModelConfig

    model = DiffusionAutoencoder(ModelConfig.named("tiny"))
    loss = diffusion.training_loss(model, x0)                    # x0: (B, 1, H, W) in [-1, 1]; scalar
    loss.backward()

    z_sem = diffusion.encode(model, x0)                          # (B, Z)
    x_T = diffusion.encode_stochastic(model, x0, z_sem, steps=20)  # DDIM inversion, (B, 1, H, W)
    x0_rec = diffusion.decode(model, x_T, z_sem, steps=20)       # (B, 1, H, W), ~= x0
    x_new = diffusion.decode(model, x_T, z_edited, steps=100)    # manipulation (paper: generation T = 100)

The loops run the model in eval mode under `torch.no_grad()` and restore its mode afterwards; wrap calls in
`torch.autocast` for bf16/fp16 inference (the DDIM arithmetic stays in the dtype of `x`).

Notation (DDIM paper): alpha_bar_t = prod_{s<=t} (1 - beta_s);
x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_TIMESTEPS = 1000
EVAL_STEPS = 20  # paper Table 5 `eval_T`: DDIM steps for reconstruction
GENERATION_STEPS = 100  # paper Table 5 `generation T`: DDIM steps for manipulated images
# DDIM steps of the inversion x0 -> x_T that an edit (a grade ladder) starts from: DiffAE's manipulation
# notebook inverts with T = 250 and renders the edited z_sem with T = 100; the paper does not state its own.
EDIT_INVERSION_STEPS = 250


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Precomputed float64 tables of the forward process (CPU).

    Args:
        betas: (T,) float64 noise variances beta_t.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor = field(init=False)  # (T,) float64 alpha_bar_t

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64, device="cpu")
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor of values in (0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def linear(
        cls, num_timesteps: int = NUM_TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """DDPM's / DiffAE's linear schedule, `np.linspace` in float64 exactly as DiffAE builds it."""
        return cls(torch.from_numpy(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)))

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a Python float, with the DiffAE end conventions.

        `t = -1` is the clean image (alpha_bar = 1, DiffAE's `alphas_cumprod_prev[0]`) and `t = T` is pure noise
        (alpha_bar = 0, DiffAE's `alphas_cumprod_next[-1]`).
        """
        if t == -1:
            return 1.0
        if t == self.num_timesteps:
            return 0.0
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep {t} outside [-1, {self.num_timesteps}]")
        return float(self.alphas_cumprod[t])


@lru_cache(maxsize=1)
def default_schedule() -> NoiseSchedule:
    """The paper's schedule: T = 1000, linear betas 1e-4..0.02."""
    return NoiseSchedule.linear()


def ddim_timesteps(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """The DDIM timesteps DiffAE uses for `ddim<steps>`, ascending.

    DiffAE's `space_timesteps` takes the smallest integer stride s with exactly `steps` elements in
    `range(0, T, s)`: 20 -> 0, 50, ..., 950; 100 -> 0, 10, ..., 990; 250 -> 0, 4, ..., 996. When `steps` divides
    T this is `range(0, T, T // steps)`.

    Args:
        steps: number of DDIM steps N (= number of model evaluations).
        num_timesteps: T of the trained schedule.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == steps:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"steps={steps}: no integer stride gives exactly {steps} steps out of {num_timesteps}")


def _gather(schedule: NoiseSchedule, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) for a batch of t, computed in float64, shaped (B, 1, 1, 1)."""
    ab = schedule.alphas_cumprod[t.cpu()]  # (B,) float64; indexed on the CPU because not every device has float64
    shape = (-1,) + (1,) * (x.ndim - 1)
    as_x = dict(device=x.device, dtype=x.dtype)
    return ab.sqrt().to(**as_x).view(shape), (1.0 - ab).sqrt().to(**as_x).view(shape)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule | None = None
) -> torch.Tensor:
    """Forward process q(x_t | x0) (diffusers' `add_noise`).

    Args:
        x0: (B, C, H, W) clean images.
        t: (B,) integer timesteps in [0, T).
        noise: (B, C, H, W) standard normal eps.
        schedule: defaults to `default_schedule()`.

    Returns:
        (B, C, H, W) x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
    """
    sqrt_ab, sqrt_1m_ab = _gather(schedule or default_schedule(), t, x0)
    return sqrt_ab * x0 + sqrt_1m_ab * noise


def training_loss(
    model: nn.Module,
    x0: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    schedule: NoiseSchedule | None = None,
    reduction: str = "mean",
    z_sem: torch.Tensor | None = None,
) -> torch.Tensor:
    """DiffAE's training objective: the encoder sees x0, the UNet predicts eps from x_t; MSE on eps.

    Encoder and UNet get gradients from this one loss (they are trained jointly).

    Args:
        model: a `DiffusionAutoencoder` (anything with `.encoder(x0)` and `(x_t, t, z_sem) -> eps_hat`).
        x0: (B, C, H, W) clean images in [-1, 1].
        t: (B,) timesteps; default uniform in [0, T).
        noise: (B, C, H, W) eps; default standard normal.
        generator: random generator for t and noise (must live on x0's device).
        schedule: defaults to `default_schedule()`.
        reduction: "mean" (scalar) or "none" ((B,) per-sample mean over pixels, e.g. to log loss against t).
        z_sem: the encoder's code of x0 when the caller already computed it (a latent regulariser); default
            `model.encoder(x0)`.
    """
    schedule = schedule or default_schedule()
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (B,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    z_sem = model.encoder(x0) if z_sem is None else z_sem  # (B, Z)
    eps_hat = model(q_sample(x0, t, noise, schedule), t, z_sem)  # (B, C, H, W)
    per_sample = F.mse_loss(eps_hat.float(), noise.float(), reduction="none").flatten(1).mean(dim=1)  # (B,)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def mmd_to_gaussian(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """MMD between a batch of codes and as many draws of N(0, I), Gaussian kernel exp(-|a-b|^2 / (2 Z)).

    InfoDiffusion's latent prior (Wang et al., ICML 2023; the InfoVAE estimator): a deterministic encoder
    can only match N(0, I) by spreading images over all Z dimensions, so the term works against the
    collapse of z_sem onto one direction. Biased V-statistic (diagonals included): it is >= 0.
    """
    prior = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    scale = 2.0 * z.shape[1]

    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / scale).mean()

    return k(z, z) + k(prior, prior) - 2 * k(z, prior)


def _x0_and_eps(
    x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float, clip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0_hat from (x_t, eps_hat); with `clip`, x0_hat is clamped to [-1, 1] and eps re-derived from it."""
    eps = eps.to(x_t.dtype)
    x0 = (x_t - (1.0 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        # DiffAE re-derives eps so that (x0_hat, eps) stay consistent with x_t after the clamp. Without clipping
        # this is the identity up to rounding, so it is skipped there.
        eps = (x_t - alpha_bar_t**0.5 * x0) / (1.0 - alpha_bar_t) ** 0.5
    return x0, eps


def ddim_step(
    schedule: NoiseSchedule, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, *, clip: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM sampling step (eta = 0), x_t -> x_{t_prev}.

    Args:
        schedule: the noise schedule.
        x_t: (B, C, H, W) current sample at timestep t.
        eps: (B, C, H, W) eps_hat = model(x_t, t, z_sem).
        t: current timestep.
        t_prev: next (smaller) timestep; -1 means the clean image (alpha_bar = 1).
        clip: clamp x0_hat to [-1, 1] and re-derive eps (DiffAE `clip_denoised=True`).

    Returns:
        x_{t_prev} and x0_hat, both (B, C, H, W).
    """
    # 1. alpha_bar at both ends  2. x0_hat and eps  3. x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps
    ab_t, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    x0, eps = _x0_and_eps(x_t, eps, ab_t, clip)
    return ab_prev**0.5 * x0 + (1.0 - ab_prev) ** 0.5 * eps, x0


def ddim_invert_step(
    schedule: NoiseSchedule, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_next: int, *, clip: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM inversion step (DiffAE `ddim_reverse_sample`), x_t -> x_{t_next}, using eps at t.

    Args:
        schedule: the noise schedule.
        x_t: (B, C, H, W) current latent at timestep t.
        eps: (B, C, H, W) eps_hat = model(x_t, t, z_sem).
        t: current timestep.
        t_next: next (larger) timestep; T means the end of the chain (alpha_bar = 0), where the result is the
            (re-derived) eps itself.
        clip: clamp x0_hat to [-1, 1] and re-derive eps (DiffAE's default).

    Returns:
        x_{t_next} and x0_hat, both (B, C, H, W).
    """
    ab_t, ab_next = schedule.alpha_bar(t), schedule.alpha_bar(t_next)
    x0, eps = _x0_and_eps(x_t, eps, ab_t, clip)
    return ab_next**0.5 * x0 + (1.0 - ab_next) ** 0.5 * eps, x0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Semantic code z_sem of clean images (one encoder pass; DiffAE `LitModel.encode`).

    Args:
        model: a `DiffusionAutoencoder`.
        x: (B, C, H, W) images in [-1, 1].

    Returns:
        (B, Z) z_sem in x's dtype (float32 for float32 images, also under autocast).
    """
    with _eval_mode(model):
        return model.encoder(x).to(x.dtype)


def encode_stochastic(
    model: nn.Module,
    x: torch.Tensor,
    z_sem: torch.Tensor,
    *,
    steps: int = EVAL_STEPS,
    clip: bool = True,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion x0 -> x_T given z_sem (DiffAE `encode_stochastic`); `steps` model calls.

    Args:
        model: a `DiffusionAutoencoder`.
        x: (B, C, H, W) clean images in [-1, 1].
        z_sem: (B, Z) their semantic codes (`encode(model, x)`).
        steps: DDIM steps N (DiffAE default 20; its manipulation notebook inverts with 250).
        clip: clamp x0_hat at every step (DiffAE default).
        schedule: defaults to `default_schedule()`.

    Returns:
        (B, C, H, W) x_T, the noise map that `decode` turns back into `x`.
    """
    schedule = schedule or default_schedule()
    ts = ddim_timesteps(steps, schedule.num_timesteps)
    with _eval_mode(model):
        for i, t in enumerate(ts):
            t_next = ts[i + 1] if i + 1 < len(ts) else schedule.num_timesteps
            eps = model(x, torch.full((x.shape[0],), t, device=x.device), z_sem)
            x, _ = ddim_invert_step(schedule, x, eps, t, t_next, clip=clip)
    return x


def decode(
    model: nn.Module,
    x_T: torch.Tensor,
    z_sem: torch.Tensor,
    *,
    steps: int = EVAL_STEPS,
    clip: bool = True,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """DDIM sampling (eta = 0) from x_T conditioned on z_sem (DiffAE `render`); `steps` model calls.

    Args:
        model: a `DiffusionAutoencoder`.
        x_T: (B, C, H, W) start noise: `encode_stochastic` output for a reconstruction, or N(0, I).
        z_sem: (B, Z) semantic codes (possibly edited).
        steps: DDIM steps N (paper: 20 for reconstruction, 100 for generation).
        clip: clamp x0_hat to [-1, 1] at every step.
        schedule: defaults to `default_schedule()`.

    Returns:
        (B, C, H, W) images in [-1, 1] (with `clip`).
    """
    schedule = schedule or default_schedule()
    ts = ddim_timesteps(steps, schedule.num_timesteps)
    x = x_T
    with _eval_mode(model):
        for i in reversed(range(len(ts))):
            t_prev = ts[i - 1] if i > 0 else -1
            eps = model(x, torch.full((x.shape[0],), ts[i], device=x.device), z_sem)
            x, _ = ddim_step(schedule, x, eps, ts[i], t_prev, clip=clip)
    return x


# ------------------------------------------------------------------- programmes over encode/decode


def reconstruct(net, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, 1, S, S) in [-1, 1] -> its DDIM inversion + decode with `steps` steps each ("inv" programme)."""
    z = encode(net, x0)
    return decode(net, encode_stochastic(net, x0, z, steps=steps), z, steps=steps)


def decode_random(net, x_for_z: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
    """Render z_sem of `x_for_z` from a seeded random x_T ("recon" programme when x_for_z is the input)."""
    z = encode(net, x_for_z)
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(x_for_z.shape, generator=g).to(x_for_z.device)
    return decode(net, x_t, z, steps=steps)
