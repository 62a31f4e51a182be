"""The diffusion autoencoder's networks: semantic encoder and z_sem-conditioned UNet (DiffAE layout).

Networks only; the noise schedule, the loss and the DDIM loops are in `latentstore.diffusion`.

Build a model from a named config, and save/restore its config as JSON next to the weights::

    from latentstore.model import DiffusionAutoencoder, ModelConfig

    cfg = ModelConfig.named("small")            # "paper" | "small" | "tiny"
    model = DiffusionAutoencoder(cfg)
    z_sem = model.encoder(x)                    # x: (B, 1, 96, 96) in [-1, 1] -> (B, 512)
    eps_hat = model(x_t, t, z_sem)              # predicted noise, (B, 1, 96, 96)
    json.dumps(cfg.to_dict()); ModelConfig.from_dict(d)

Layout (Preechakul et al. 2022, official `BeatGANsAutoencModel`):

* `SemanticEncoder` (DiffAE `BeatGANsEncoderModel`): the down half of a UNet, one level deeper than the
  decoder, with unconditioned single-conv ResBlocks, attention at `attn_resolutions`, a middle
  ResBlock-Attention-ResBlock, then GN -> SiLU -> global average pool -> 1x1 conv to `z_dim`. z_sem is not
  normalised.
* `ConditionalUNet`: `num_res_blocks` ResBlocks per level going down, `num_res_blocks + 1` going up with
  concatenated skips, resampling by ResBlocks (`resblock_updown`), attention at `attn_resolutions` and always in
  the middle. Every ResBlock (down, middle, up, resampling) is conditioned on the time embedding and on z_sem.
  The zero-initialised second convs, attention projections and output conv make eps_hat exactly 0 at init.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .blocks import CondSequential, ResBlock, attention_block, group_norm, timestep_embedding, zero_module
from .errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the encoder and UNet. Saved with every checkpoint (`to_dict`), so a model can be rebuilt.

    Args:
        image_size: slice height = width in px (the data are 96x96 sagittal CT slices).
        in_channels: image channels (1 for CT); the UNet predicts noise with the same channels.
        base_channels: width of the first level (DiffAE `net_ch`); also the sinusoidal time-embedding width.
        channel_mult: UNet width multipliers per level; level i runs at `image_size / 2**i` px.
        enc_channel_mult: encoder multipliers, one level deeper than the UNet as in DiffAE (96 px -> 6 px).
        num_res_blocks: ResBlocks per level on the way down (encoder and UNet); the UNet's up path has one more.
        attn_resolutions: resolutions in px that get self-attention after each ResBlock; the middle blocks
            always attend. Resolutions a net never reaches are ignored (as in DiffAE), so a config can change
            `image_size` alone.
        num_heads: attention heads (DiffAE: 1).
        norm_groups: GroupNorm groups; must divide every block width.
        dropout: dropout inside the conditioned ResBlocks (DiffAE: 0.1).
        embed_channels: width of the time embedding MLP (DiffAE: 512).
        z_dim: size of z_sem (paper: 512).
    """

    image_size: int = 96
    in_channels: int = 1
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    enc_channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (24,)
    num_heads: int = 1
    norm_groups: int = 32
    dropout: float = 0.1
    embed_channels: int = 512
    z_dim: int = 512

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable.
        for name in ("channel_mult", "enc_channel_mult", "attn_resolutions"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "num_heads",
                     "norm_groups", "embed_channels", "z_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("channel_mult", "enc_channel_mult"):
            mult = getattr(self, name)
            if not mult or min(mult) < 1:
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {mult}")
            if self.image_size % 2 ** (len(mult) - 1):
                raise ValueError(f"image_size={self.image_size} cannot be halved {len(mult) - 1} times ({name})")
            for m in mult:
                width = self.base_channels * m
                if width % self.norm_groups or width % self.num_heads:
                    raise ValueError(
                        f"norm_groups={self.norm_groups} and num_heads={self.num_heads} must divide every width; "
                        f"{name} gives {width}"
                    )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def named(cls, name: str) -> ModelConfig:
        """One of the named configs: `paper`, `small`, `cpu48`, `tiny` (see `NAMED_CONFIGS`)."""
        try:
            return cls(**NAMED_CONFIGS[name])
        except KeyError:
            raise InputError(f"unknown model config {name!r} (expected one of {', '.join(NAMED_CONFIGS)})") from None

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error so a config from a newer version is not half-read."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**d)


NAMED_CONFIGS: dict[str, dict] = {
    # DiffAE's 64-px autoencoder (ffhq64_autoenc) on the 96 = 3 * 32 px grid: UNet levels at 96/48/24/12 px,
    # encoder down to 6 px, attention at 24 px. ~91 M parameters. Attention resolution for 96 px: DiffAE's
    # 64-px model attends at 16 px, its third level (1/4 of the side); 24 px is the same level and the same
    # 1/4 on the 96 px grid (576 tokens of 4x4 mm: a vertebral body of 25-35 mm spans 6-9 tokens).
    # Training recipe: train.RECIPES["paper"] (Table 5).
    "paper": dict(),
    # Trains to a usable model in about an hour on 2 CPU cores (~1 s per batch-16 step, bench/model.py): narrow
    # high-resolution levels, one ResBlock per level, attention only at 12 px and in the middle. ~2.2 M params.
    # Width 64 at 24/12 px, not 128: DiffAE's up-sampling ResBlocks run the deeper level's width at twice its
    # resolution, so (1, 2, 4, 8) costs 1.35x the FLOPs (3.1 vs 2.3 GFLOPs/img) for 4.8 M params.
    "small": dict(base_channels=16, channel_mult=(1, 2, 4, 4), enc_channel_mult=(1, 2, 4, 4, 4),
                  num_res_blocks=1, attn_resolutions=(12,), norm_groups=8, dropout=0.0, embed_channels=128),
    # `small` at half resolution (48 px = 2 mm pixels; a 20 % height loss of a 25 mm body is still 2.5 px):
    # a quarter of small's FLOPs per image, so four times the images per CPU hour. Levels 48/24/12/6 px,
    # encoder down to 3 px. Slices are area-downsampled from the stored 96 px (Preprocess.image_size).
    "cpu48": dict(image_size=48, base_channels=16, channel_mult=(1, 2, 4, 4), enc_channel_mult=(1, 2, 4, 4, 4),
                  num_res_blocks=1, attn_resolutions=(12,), norm_groups=8, dropout=0.0, embed_channels=128),
    # Tests: seconds on a CPU. Also runs at 96 px (`dataclasses.replace(cfg, image_size=96)`): levels at
    # 96/48/24 px, no level attention, middle attention at 24 px.
    "tiny": dict(image_size=32, base_channels=16, channel_mult=(1, 2, 2), enc_channel_mult=(1, 2, 2, 2),
                 num_res_blocks=1, attn_resolutions=(8,), norm_groups=8, dropout=0.0, embed_channels=64, z_dim=32),
}


def _down_path(cfg: ModelConfig, mult: tuple[int, ...], conditioned: bool) -> tuple[nn.ModuleList, list[int], int, int]:
    """Stem conv + levels of ResBlocks (+ attention) + down-sampling ResBlocks between levels.

    Returns the stages, the output width of each stage (the UNet's skip widths), the final width and resolution.
    """
    kw = dict(emb_channels=cfg.embed_channels, z_channels=cfg.z_dim, dropout=cfg.dropout) if conditioned else {}
    ch, res = cfg.base_channels, cfg.image_size
    stages = [CondSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
    widths = [ch]
    for level, m in enumerate(mult):
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, cfg.base_channels * m, cfg.norm_groups, **kw)]
            ch = cfg.base_channels * m
            if res in cfg.attn_resolutions:
                layers.append(attention_block(ch, cfg.norm_groups, cfg.num_heads))
            stages.append(CondSequential(*layers))
            widths.append(ch)
        if level != len(mult) - 1:
            stages.append(CondSequential(ResBlock(ch, ch, cfg.norm_groups, down=True, **kw)))
            widths.append(ch)
            res //= 2
    return nn.ModuleList(stages), widths, ch, res


def _middle(cfg: ModelConfig, ch: int, conditioned: bool) -> CondSequential:
    kw = dict(emb_channels=cfg.embed_channels, z_channels=cfg.z_dim, dropout=cfg.dropout) if conditioned else {}
    return CondSequential(
        ResBlock(ch, ch, cfg.norm_groups, **kw),
        attention_block(ch, cfg.norm_groups, cfg.num_heads),
        ResBlock(ch, ch, cfg.norm_groups, **kw),
    )


class SemanticEncoder(nn.Module):
    """Image -> z_sem (DiffAE `BeatGANsEncoderModel`, no time input).

    Args:
        cfg: the model config (`enc_channel_mult`, `z_dim`, ...).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.down, _, ch, _ = _down_path(cfg, cfg.enc_channel_mult, conditioned=False)
        self.middle = _middle(cfg, ch, conditioned=False)
        self.head = nn.Sequential(
            group_norm(ch, cfg.norm_groups), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, cfg.z_dim, 1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W) clean images in [-1, 1].

        Returns:
            (B, z_dim) z_sem.
        """
        h = x
        for stage in self.down:
            h = stage(h)  # (B, C_l, H_l, W_l)
        return self.head(self.middle(h))  # (B, Z)


class ConditionalUNet(nn.Module):
    """(x_t, t, z_sem) -> predicted noise, with AdaGN time and z_sem conditioning in every ResBlock.

    Args:
        cfg: the model config.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.base_channels = cfg.base_channels
        E = cfg.embed_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.base_channels, E), nn.SiLU(), nn.Linear(E, E))
        self.down, widths, ch, res = _down_path(cfg, cfg.channel_mult, conditioned=True)
        self.middle = _middle(cfg, ch, conditioned=True)
        kw = dict(emb_channels=E, z_channels=cfg.z_dim, dropout=cfg.dropout)
        up = []
        for level, m in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + widths.pop(), cfg.base_channels * m, cfg.norm_groups, **kw)]
                ch = cfg.base_channels * m
                if res in cfg.attn_resolutions:
                    layers.append(attention_block(ch, cfg.norm_groups, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, ch, cfg.norm_groups, up=True, **kw))
                    res *= 2
                up.append(CondSequential(*layers))
        self.up = nn.ModuleList(up)
        self.out = nn.Sequential(
            group_norm(ch, cfg.norm_groups), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, z_sem: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x_t: (B, C, H, W) noisy images.
            t: (B,) integer timesteps in [0, 1000); an int or a 1-element tensor is broadcast to the batch.
            z_sem: (B, Z) semantic codes.

        Returns:
            (B, C, H, W) predicted noise eps_hat.
        """
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        t_emb = self.time_embed(timestep_embedding(t, self.base_channels))  # (B, E)
        hs = []
        h = x_t
        for stage in self.down:
            h = stage(h, t_emb, z_sem)  # (B, C_l, H_l, W_l)
            hs.append(h)
        h = self.middle(h, t_emb, z_sem)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), t_emb, z_sem)
        return self.out(h)  # (B, C, H, W)


class DiffusionAutoencoder(nn.Module):
    """Semantic encoder + conditional UNet, trained jointly (DiffAE).

    Args:
        cfg: the model config; kept as `self.config` so checkpoints can store `config.to_dict()`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = SemanticEncoder(cfg)
        self.unet = ConditionalUNet(cfg)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, z_sem: torch.Tensor) -> torch.Tensor:
        """Predicted noise: `(B, C, H, W), (B,), (B, Z) -> (B, C, H, W)`. Encode with `self.encoder(x0)`."""
        return self.unet(x_t, t, z_sem)
