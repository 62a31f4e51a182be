"""Noise schedule, DDIM steps and loops, and the training loss, checked against DiffAE's conventions with stub
models whose predicted noise is known."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from latentstore import diffusion as D
from latentstore.model import DiffusionAutoencoder, ModelConfig

torch.set_num_threads(2)
S = D.default_schedule()


class StubModel(nn.Module):
    """Predicts a fixed noise map whatever the input; records the timesteps and z_sem it was called with."""

    def __init__(self, eps: torch.Tensor, z_dim: int = 4) -> None:
        super().__init__()
        self.eps, self.z_dim, self.calls = eps, z_dim, []
        self.encoder = lambda x: x.flatten(1)[:, : self.z_dim] * 2

    def forward(self, x_t, t, z_sem):
        self.calls.append((t.tolist(), z_sem.clone(), self.training))
        return self.eps.expand_as(x_t).to(x_t.dtype)


def test_schedule_values():
    assert S.num_timesteps == 1000 and S.betas.dtype == torch.float64 == S.alphas_cumprod.dtype
    assert S.betas[0].item() == 1e-4 and S.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert S.alphas_cumprod[0].item() == 1 - 1e-4
    assert S.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + 0.0199 / 999)), rel=1e-14)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert np.allclose(S.alphas_cumprod.numpy(), expected, rtol=1e-12, atol=0)
    assert S.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)
    assert S.alpha_bar(-1) == 1.0 and S.alpha_bar(1000) == 0.0 and S.alpha_bar(0) == 1 - 1e-4
    with pytest.raises(ValueError):
        S.alpha_bar(1001)


def test_step_spacing_matches_diffae():
    assert D.ddim_timesteps(20) == list(range(0, 1000, 50))
    assert D.ddim_timesteps(20)[-1] == 950
    assert D.ddim_timesteps(100) == list(range(0, 991, 10))
    assert D.ddim_timesteps(250) == list(range(0, 1000, 4))
    assert D.ddim_timesteps(1000) == list(range(1000))
    # 30 does not divide 1000: DiffAE takes the smallest stride that still gives exactly 30 steps (34).
    assert D.ddim_timesteps(30) == list(range(0, 1000, 34)) and len(D.ddim_timesteps(30)) == 30
    for bad in (0, 1001, 999):  # 999 steps: no integer stride gives exactly 999
        with pytest.raises(ValueError):
            D.ddim_timesteps(bad)


def test_q_sample_per_sample_t():
    x0, noise = torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -1.0)
    x_t = D.q_sample(x0, torch.tensor([0, 999]), noise)
    for i, t in enumerate([0, 999]):
        ab = S.alphas_cumprod[t].item()
        assert torch.allclose(x_t[i], torch.tensor(math.sqrt(ab) * 0.5 - math.sqrt(1 - ab)), atol=1e-7)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("t,t_next", [(0, 50), (500, 550), (900, 950), (0, 999)])
def test_invert_then_sample_is_exact_for_constant_eps(dtype, tol, t, t_next):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 8, 8, generator=g) * 4 - 2).to(dtype)  # values outside [-1, 1] too: clipping is off
    eps = torch.randn(1, 1, 8, 8, generator=g).to(dtype).expand_as(x)
    x_next, x0_inv = D.ddim_invert_step(S, x, eps, t, t_next, clip=False)
    assert not torch.allclose(x_next, x)  # the step does move
    x_back, x0_smp = D.ddim_step(S, x_next, eps, t_next, t, clip=False)
    assert torch.allclose(x_back, x, atol=tol, rtol=0)
    assert torch.allclose(x0_smp, x0_inv, atol=tol * 20, rtol=0)


def test_clipping_rederives_eps_from_the_clipped_x0():
    # x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab) is far above 1, so it is clipped to 1 and the direction term
    # uses eps' = (x_t - sqrt(ab) * 1) / sqrt(1 - ab), not the raw eps (MONAI's DDIMScheduler uses the raw one).
    t, t_prev, x_t, eps = 500, 450, 2.0, -0.5
    ab, ab_prev = S.alphas_cumprod[t].item(), S.alphas_cumprod[t_prev].item()
    eps_re = (x_t - math.sqrt(ab)) / math.sqrt(1 - ab)
    expected = math.sqrt(ab_prev) * 1.0 + math.sqrt(1 - ab_prev) * eps_re
    raw = math.sqrt(ab_prev) * 1.0 + math.sqrt(1 - ab_prev) * eps
    x_prev, x0 = D.ddim_step(S, torch.full((1, 1, 1, 1), x_t, dtype=torch.float64),
                             torch.full((1, 1, 1, 1), eps, dtype=torch.float64), t, t_prev)
    assert x0.item() == 1.0
    assert x_prev.item() == pytest.approx(expected, rel=1e-12) and abs(expected - raw) > 0.1
    # The last sampling step (t_prev = -1, alpha_bar = 1) returns x0_hat itself.
    x_last, x0_last = D.ddim_step(S, torch.full((1, 1, 1, 1), 0.3), torch.full((1, 1, 1, 1), 0.1), 0, -1)
    assert torch.equal(x_last, x0_last)


def test_loops_call_the_model_n_times_at_diffae_timesteps():
    eps = torch.full((1, 1, 4, 4), 0.25)
    model = StubModel(eps).train()
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    z_sem = D.encode(model, x)
    assert torch.equal(z_sem, x.flatten(1)[:, :4] * 2)
    D.encode_stochastic(model, x, z_sem, steps=20)
    assert [c[0] for c in model.calls] == [[t, t] for t in range(0, 1000, 50)]
    model.calls.clear()
    D.decode(model, torch.randn(2, 1, 4, 4), z_sem, steps=100)
    assert [c[0] for c in model.calls] == [[t, t] for t in range(990, -1, -10)]
    assert all(torch.equal(c[1], z_sem) and c[2] is False for c in model.calls)  # eval mode inside the loop
    assert model.training  # the caller's mode is restored


def test_inversion_ends_at_the_rederived_eps():
    # DiffAE's last inversion step goes to alpha_bar = 0, so x_T is the (re-derived) eps of the last step:
    # with a constant eps and no clipping that is eps itself, exactly.
    eps = torch.randn(1, 1, 4, 4)
    x_T = D.encode_stochastic(StubModel(eps), torch.rand(3, 1, 4, 4), torch.zeros(3, 4), steps=10, clip=False)
    assert torch.equal(x_T, eps.expand(3, -1, -1, -1))


def test_untrained_model_inverts_to_zero_and_decodes_by_rescaling():
    torch.manual_seed(0)
    model = DiffusionAutoencoder(ModelConfig.named("tiny"))  # eps_hat == 0 at init
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    z_sem = D.encode(model, x)
    assert torch.equal(D.encode_stochastic(model, x, z_sem, steps=5, clip=False), torch.zeros_like(x))
    # Sampling with eps_hat = 0 only rescales: x0 = x_T / sqrt(alpha_bar_950) (the product telescopes).
    x_T = torch.randn(2, 1, 32, 32)
    out = D.decode(model, x_T, z_sem, steps=20, clip=False)
    assert torch.allclose(out, x_T / math.sqrt(S.alphas_cumprod[950].item()), rtol=1e-5)
    clipped = D.decode(model, x_T, z_sem, steps=20)
    assert clipped.abs().max() <= 1.0 and torch.allclose(clipped, out.clamp(-1, 1), atol=1e-6)


def test_training_loss_is_the_eps_mse():
    torch.manual_seed(0)
    model = DiffusionAutoencoder(ModelConfig.named("tiny"))
    x0 = torch.rand(3, 1, 32, 32) * 2 - 1
    t, noise = torch.tensor([0, 400, 999]), torch.randn(3, 1, 32, 32)
    per_sample = D.training_loss(model, x0, t=t, noise=noise, reduction="none")
    assert per_sample.shape == (3,)
    # eps_hat == 0 at init, so the loss is the mean square of the noise.
    assert torch.allclose(per_sample, noise.square().mean(dim=(1, 2, 3)))
    assert D.training_loss(model, x0, t=t, noise=noise).item() == pytest.approx(per_sample.mean().item())
    with pytest.raises(ValueError):
        D.training_loss(model, x0, reduction="sum")


def test_loss_falls_on_tiny_data_and_trains_the_encoder():
    torch.manual_seed(0)
    model = DiffusionAutoencoder(ModelConfig.named("tiny"))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    x0 = torch.stack([torch.tanh(3 * (r - xx.square() - yy.square())) for r in (0.2, 0.4, 0.6, 0.8)])[:, None]
    g = torch.Generator().manual_seed(1)
    t_eval = torch.arange(0, 1000, 125)  # 8 fixed timesteps, 2 per image
    noise_eval = torch.randn(8, 1, 32, 32, generator=g)
    x_eval = x0.repeat(2, 1, 1, 1)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return D.training_loss(model, x_eval, t=t_eval, noise=noise_eval).item()

    before = eval_loss()
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(30):  # ~0.25 after 30 steps for seeds 0-2; 0.2 after 40
        loss = D.training_loss(model, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before == pytest.approx(1.0, abs=0.1)  # eps_hat == 0 at init
    assert after < 0.5 * before
    assert any(not torch.equal(a, p) for a, p in zip(enc_before, model.encoder.parameters()))


def test_decode_is_per_sample_independent():
    torch.manual_seed(0)
    model = DiffusionAutoencoder(ModelConfig.named("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.01)  # small: DDIM amplifies float differences by 1/sqrt(alpha_bar)
    x_T, z_sem = torch.randn(3, 1, 32, 32), torch.randn(3, 32)
    batch = D.decode(model, x_T, z_sem, steps=4)
    single = torch.cat([D.decode(model, x_T[i : i + 1], z_sem[i : i + 1], steps=4) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_mmd_prior_prefers_spread_codes_to_a_collapsed_one():
    from latentstore.diffusion import mmd_to_gaussian

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(64, 128, generator=g)
    collapsed = torch.randn(64, 1, generator=g) * torch.randn(1, 128, generator=g)  # rank 1, unit scale
    assert float(mmd_to_gaussian(spread, g)) < 0.5 * float(mmd_to_gaussian(collapsed, g))
    assert float(mmd_to_gaussian(10 * spread, g)) > float(mmd_to_gaussian(spread, g))
    z = torch.randn(8, 16, requires_grad=True)
    mmd_to_gaussian(z).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
