"""Building blocks of the diffusion autoencoder (DiffAE, Preechakul et al. 2022, `model/blocks.py`).

`ResBlock` is DiffAE's residual block in its two forms:

* conditioned (decoder UNet): GN -> SiLU -> [resample] -> conv3x3, then the adaptive group norm
  `GN(h) * (1 + t_scale) + t_shift`, then `* (1 + z_scale)`, then SiLU -> Dropout -> zero-initialised conv3x3,
  plus the skip. `t_scale, t_shift = Linear(SiLU(t_emb))`, `z_scale = Linear(SiLU(z_sem))` (scale only). The
  paper writes AdaGN as `z_s (t_s GN(h) + t_b)`; the official code (followed here) uses `1 +` scales and a SiLU
  before each projection.
* unconditioned (semantic encoder): only GN -> SiLU -> [resample] -> conv3x3 plus the skip. DiffAE builds no
  second conv when a block has no condition, so encoder blocks are single-conv residual blocks.

Attention is MONAI's `SpatialAttentionBlock` (GN -> one qkv projection -> softmax attention -> out projection,
residual) with its output projection zeroed, as DiffAE zeroes `proj_out`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

# DiffAE's GroupNorm32 uses torch's default eps; MONAI's attention block would default to 1e-6.
NORM_EPS = 1e-5


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` in place and return it (DiffAE's `zero_module`)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, `[cos, sin]` order, max period 10000.

    MONAI's `get_timestep_embedding` is the same formula and order as DiffAE's `nn.timestep_embedding`.

    Args:
        t: (B,) timesteps (int or float).
        dim: embedding width.

    Returns:
        (B, dim) float32.
    """
    return get_timestep_embedding(t, dim)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups != 0:
        raise ValueError(f"norm_groups={groups} does not divide a block width of {channels} channels")
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ResBlock(nn.Module):
    """DiffAE residual block, optionally conditioned on a time embedding and z_sem, optionally resampling.

    Args:
        in_channels: input channels.
        out_channels: output channels (a 1x1 conv skip is used when they differ).
        norm_groups: GroupNorm groups; must divide both channel counts.
        emb_channels: width of the time embedding; `None` builds an unconditioned (encoder) block.
        z_channels: width of z_sem; required when `emb_channels` is given.
        dropout: dropout before the zero-initialised conv (conditioned blocks only).
        up: nearest-neighbour x2 upsampling inside the block.
        down: 2x2 average-pool downsampling inside the block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_groups: int,
        emb_channels: int | None = None,
        z_channels: int | None = None,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("up and down cannot both be True")
        if (emb_channels is None) != (z_channels is None):
            raise ValueError("emb_channels and z_channels must be given together (conditioned) or not at all")
        self.conditioned = emb_channels is not None
        self.in_norm = group_norm(in_channels, norm_groups)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if up:
            self.resample: nn.Module = nn.Upsample(scale_factor=2, mode="nearest")
        elif down:
            self.resample = nn.AvgPool2d(2)
        else:
            self.resample = nn.Identity()
        if self.conditioned:
            self.t_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            self.z_proj = nn.Sequential(nn.SiLU(), nn.Linear(z_channels, out_channels))
            self.out_norm = group_norm(out_channels, norm_groups)
            self.dropout = nn.Dropout(dropout)
            # Zero init: the block starts as its skip path, so the whole UNet starts as the identity map
            # up to the (also zeroed) output conv.
            self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(
        self, x: torch.Tensor, t_emb: torch.Tensor | None = None, z_sem: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            x: (B, C_in, H, W).
            t_emb: (B, E) time embedding (conditioned blocks).
            z_sem: (B, Z) semantic code (conditioned blocks).

        Returns:
            (B, C_out, H', W') with H' = 2H (up), H/2 (down) or H.
        """
        # Resample after the norm/activation and before the conv, on both paths (DiffAE `updown`).
        h = self.in_conv(self.resample(F.silu(self.in_norm(x))))  # (B, C_out, H', W')
        x = self.resample(x)
        if self.conditioned:
            t_scale, t_shift = self.t_proj(t_emb)[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
            z_scale = self.z_proj(z_sem)[:, :, None, None]  # (B, C_out, 1, 1)
            h = self.out_norm(h) * (1 + t_scale) + t_shift
            h = h * (1 + z_scale)
            h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


def attention_block(channels: int, norm_groups: int, num_heads: int = 1) -> SpatialAttentionBlock:
    """Residual spatial self-attention over all H*W positions, zero-initialised output projection.

    Args:
        channels: channels C; must be divisible by `num_heads` and `norm_groups`.
        norm_groups: GroupNorm groups.
        num_heads: attention heads (DiffAE: 1).
    """
    if channels % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} does not divide {channels} channels")
    group_norm(channels, norm_groups)  # same divisibility check and message as the ResBlocks
    block = SpatialAttentionBlock(
        spatial_dims=2,
        num_channels=channels,
        num_head_channels=channels // num_heads,
        norm_num_groups=norm_groups,
        norm_eps=NORM_EPS,
        use_combined_linear=True,  # one qkv projection, like DiffAE's 1x1 qkv conv
        use_flash_attention=True,  # torch SDPA: fused kernels on CPU and GPU; same math
    )
    zero_module(block.attn.out_proj)
    return block


class CondSequential(nn.Sequential):
    """A sequence of layers where ResBlocks also receive (t_emb, z_sem) (DiffAE's TimestepEmbedSequential)."""

    def forward(
        self, x: torch.Tensor, t_emb: torch.Tensor | None = None, z_sem: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self:
            x = layer(x, t_emb, z_sem) if isinstance(layer, ResBlock) else layer(x)
        return x
