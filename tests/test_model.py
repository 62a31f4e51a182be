"""The DAE networks: shapes per named config, DiffAE's size, exact-zero output at init, z_sem/t conditioning
wired into every UNet ResBlock, and the config's JSON round trip and checks."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from latentstore.blocks import ResBlock
from latentstore.errors import InputError
from latentstore.model import NAMED_CONFIGS, DiffusionAutoencoder, ModelConfig

torch.set_num_threads(2)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def wake(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every all-zero parameter (zero-initialised convs and projections) random values, so that the
    conditioning paths behind them become observable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny() -> DiffusionAutoencoder:
    torch.manual_seed(0)
    return DiffusionAutoencoder(ModelConfig.named("tiny")).eval()


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_named_config_shapes_and_zero_output_at_init(name):
    torch.manual_seed(0)
    cfg = ModelConfig.named(name)
    model = DiffusionAutoencoder(cfg).eval()
    x = torch.rand(1, cfg.in_channels, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        z_sem = model.encoder(x)
        eps_hat = model(x, torch.tensor([999]), z_sem)
    assert z_sem.shape == (1, cfg.z_dim)
    assert z_sem.abs().sum() > 0  # the encoder head is not zero-initialised
    assert eps_hat.shape == x.shape
    assert torch.equal(eps_hat, torch.zeros_like(eps_hat))


def test_paper_config_has_diffae_size():
    # DiffAE's ffhq64 autoencoder (ch 64, (1,2,4,8), enc (1,2,4,8,8), attention at its third level) counted
    # with the official classes: 19.32 M encoder + 71.52 M UNet for one input channel.
    model = DiffusionAutoencoder(ModelConfig.named("paper"))
    assert n_params(model.encoder) == pytest.approx(19.32e6, rel=1e-3)
    assert n_params(model.unet) == pytest.approx(71.52e6, rel=1e-3)


def test_small_config_size_is_cpu_sized():
    model = DiffusionAutoencoder(ModelConfig.named("small"))
    assert 1e6 <= n_params(model) <= 3e6


def test_zero_output_at_init_for_a_batch(tiny):
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        eps_hat = tiny(x, torch.tensor([0, 10, 500, 999]), torch.randn(4, 32))
    assert torch.equal(eps_hat, torch.zeros_like(eps_hat))


def test_tiny_runs_at_96_px():
    cfg = dataclasses.replace(ModelConfig.named("tiny"), image_size=96)
    model = wake(DiffusionAutoencoder(cfg)).eval()
    x = torch.rand(2, 1, 96, 96) * 2 - 1
    with torch.no_grad():
        z_sem = model.encoder(x)
        eps_hat = model(x, 7, z_sem)
    assert z_sem.shape == (2, 32) and eps_hat.shape == x.shape
    assert torch.isfinite(eps_hat).all() and eps_hat.abs().sum() > 0


def test_every_unet_resblock_is_conditioned_on_z_sem_and_t():
    torch.manual_seed(0)
    model = wake(DiffusionAutoencoder(ModelConfig.named("tiny"))).eval()
    blocks = [m for m in model.unet.modules() if isinstance(m, ResBlock)]
    # tiny: 3 levels x 1 block + 2 down + 2 middle + 3 levels x 2 blocks + 2 up
    assert len(blocks) == 15 and all(b.conditioned for b in blocks)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    z_sem = torch.randn(2, 32, requires_grad=True)
    model(x, torch.tensor([100, 800]), z_sem).square().sum().backward()
    for b in blocks:
        assert b.z_proj[1].weight.grad.abs().sum() > 0
        assert b.t_proj[1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        base = model(x, 100, z_sem)
        assert not torch.allclose(base, model(x, 100, z_sem + 1.0))  # z_sem changes the output
        assert not torch.allclose(base, model(x, 900, z_sem))  # t changes the output
        # An int, a 1-element and a (B,) timestep mean the same thing.
        assert torch.equal(base, model(x, torch.tensor([100]), z_sem))
        assert torch.equal(base, model(x, torch.tensor([100, 100]), z_sem))


def test_encoder_blocks_are_unconditioned_single_conv():
    model = DiffusionAutoencoder(ModelConfig.named("tiny"))
    blocks = [m for m in model.encoder.modules() if isinstance(m, ResBlock)]
    assert blocks and not any(b.conditioned or hasattr(b, "out_conv") for b in blocks)
    convs = [m for b in blocks for m in b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == len(blocks)


def test_encoder_output_depends_on_the_image(tiny):
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z = tiny.encoder(x)
    assert not torch.allclose(z[0], z[1])


def test_dropout_only_in_train_mode():
    cfg = dataclasses.replace(ModelConfig.named("tiny"), dropout=0.5)
    model = wake(DiffusionAutoencoder(cfg))
    x, z_sem = torch.rand(1, 1, 32, 32), torch.randn(1, 32)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x, 5, z_sem), model(x, 5, z_sem))
        model.eval()
        assert torch.equal(model(x, 5, z_sem), model(x, 5, z_sem))


@pytest.mark.parametrize("name", list(NAMED_CONFIGS))
def test_config_json_round_trip(name):
    cfg = ModelConfig.named(name)
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.channel_mult, tuple)


def test_config_checks():
    with pytest.raises(InputError, match="huge"):
        ModelConfig.named("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "chanels": 3})
    with pytest.raises(ValueError, match="norm_groups"):
        ModelConfig(base_channels=48)  # 48 is not a multiple of 32 groups
    with pytest.raises(ValueError, match="image_size"):
        ModelConfig(image_size=100)  # cannot be halved 4 times
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
