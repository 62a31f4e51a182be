"""`eval recon`: how well a DAE encodes unseen slices and how close its renders are to real ones (paper Table 1).

Encoding (on held-out scans, images windowed and scaled to [0, 1]):
  * `inv`   z_sem + DDIM-inverted x_T, then DDIM decode: the near-exact autoencoding DiffAE reports.
  * `recon` z_sem + random x_T: only what the 512 numbers of z_sem carry (the part the grading uses).
  MSE, PSNR (data range 1) and SSIM (MONAI `SSIMMetric`: 11x11 Gaussian window, sigma 1.5, as DiffAE's
  `ssim.py`). LPIPS only with local weights (`--lpips-weights`); nothing is ever downloaded.
Generation: renders of z_sem from *other* held-out slices with random x_T (DiffAE's protocol for an
  autoencoder without a latent DPM) against the real held-out slices. Frechet distance (MONAI `FIDMetric`)
  and a linear-kernel MMD (MONAI `MMDMetric`) on two feature sets the project owns: the model's own z_sem
  (`FD-zsem`) and 8x8 area-pooled pixels (`FD-pix8`, model-independent). Neither is Inception-FID and the
  numbers are not comparable with the paper's FID column.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .pictures import picture_path
from .progress import Bar
from .result import Report
from .store import connect


# ------------------------------------------------------------------------------------------------ metrics


def recon_metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """MSE, PSNR (dB, data range 1) and SSIM between (B, 1, S, S) batches in [0, 1], averaged over images."""
    from monai.metrics import PSNRMetric, SSIMMetric

    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    psnr = PSNRMetric(max_val=1.0, reduction="none")(y, x).flatten()
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")(y, x).flatten()
    return {"mse": float(mse.mean()), "psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


def pix8(x01: torch.Tensor) -> torch.Tensor:
    """Model-independent features: (B, 1, S, S) in [0, 1] -> (B, 64) 8x8 area-pooled pixels."""
    return F.adaptive_avg_pool2d(x01.float(), 8).flatten(1)


def distribution_metrics(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """Frechet distance and linear-kernel MMD between (N, F) feature sets (MONAI FIDMetric / MMDMetric)."""
    from monai.metrics import FIDMetric, MMDMetric

    with contextlib.redirect_stdout(io.StringIO()):  # MONAI prints when it regularises a singular covariance
        fd = float(FIDMetric()(fake.double(), real.double()).real)
    return {"fd": fd, "mmd": float(MMDMetric()(real.double(), fake.double()))}


def lpips_fn(weights: str | Path | None):
    """An LPIPS(x, y) callable from local weights, or None when no weights were given. Never downloads.

    `weights` is a state dict of the whole `lpips.LPIPS(net='alex')` module (trunk + linear heads) as
    safetensors or a weights-only torch file; it needs the `lpips` package (and torchvision) installed.
    """
    if weights is None:
        return None
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"--lpips-weights: no file {path}")
    try:
        import lpips  # noqa: F401  (optional; needs torchvision)
    except Exception as e:  # ImportError, or torchvision failing to load its operators
        raise InputError(f"--lpips-weights needs the `lpips` package with torchvision importable ({e})") from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # pnet_rand + pretrained=False: build the architecture without fetching anything, then load local weights.
    net = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    net.load_state_dict(state, strict=True)
    net.eval()
    # grey -> 3 channels; LPIPS takes inputs in [-1, 1]
    return lambda a, b: net(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)).flatten()


# --------------------------------------------------------------------------------------------- eval recon


def eval_recon(
    store,
    model: str | None = None,
    steps: int = 20,
    n: int = 64,
    batch_size: int = 16,
    lpips_weights: str | Path | None = None,
    grid: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    record: bool = False,
    progress: bool = False,
) -> Report:
    """Table-1 metrics of a model on `n` held-out slices of the store; writes a reconstruction grid PNG
    (`grid`, default `STORE/pictures/eval-recon-<model_id>.png`); `record` writes the metrics into the card.

    The held-out scans are those the model's training run held out (its card's `holdout_fraction`).
    """
    from .checkpoint import load_model
    from .diffusion import decode_random, encode, reconstruct
    from .pictures import save_grid
    from .slicedata import read_slices

    store = connect(store)
    if grid is not None:
        picture_path(store, "", grid)  # a bad --grid fails before minutes of sampling
    if n < 2 or steps < 1:
        raise InputError(f"need --n >= 2 and --steps >= 1 (got n={n}, steps={steps})")
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = load_model(model, store, device=device)
    score_lpips = lpips_fn(lpips_weights)
    holdout = lm.card.get("train_config", {}).get("holdout_fraction", 0.1)
    slices = read_slices(store, "holdout", holdout)
    # slice ids are hashes, so the first n of the id-sorted held-out slices are an unbiased, fixed subset
    slices = slices.take(np.arange(min(n, len(slices))))
    if len(slices) < 2:
        raise InputError("need at least 2 held-out slices")
    x_all = lm.preprocess.to_model(slices.images)  # (N, 1, S, S) in [-1, 1]
    z_from = x_all.roll(1, dims=0)  # generation: z_sem of another held-out slice

    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("inv", "recon", "gen", "z_real", "z_gen", "lp")}
    with torch.no_grad(), Bar("eval recon", len(x_all), "slices", enabled=progress) as bar:
        for i in range(0, len(x_all), batch_size):
            x0 = x_all[i : i + batch_size].to(device)
            out["inv"].append(reconstruct(lm.net, x0, steps).cpu())
            out["recon"].append(decode_random(lm.net, x0, steps, seed=seed + i).cpu())
            gen = decode_random(lm.net, z_from[i : i + batch_size].to(device), steps, seed=seed + 10**6 + i)
            out["gen"].append(gen.cpu())
            out["z_real"].append(encode(lm.net, x0).float().cpu())
            out["z_gen"].append(encode(lm.net, gen).float().cpu())
            if score_lpips:
                out["lp"].append(score_lpips(x0.cpu(), out["inv"][-1]))
            bar.advance(len(x0))
    cat = {k: torch.cat(v) for k, v in out.items() if v}
    unit = lambda t: (t.float().clamp(-1, 1) + 1) / 2  # noqa: E731  metrics on [0, 1] like DiffAE
    real01 = unit(x_all)
    result = {
        "model_id": lm.model_id,
        "config": lm.card.get("config"),
        "n": len(x_all),
        "steps": steps,
        "holdout_fraction": holdout,
        "window_hu": [lm.preprocess.hu_min, lm.preprocess.hu_max],
        "encoding": {
            "inv": recon_metrics(real01, unit(cat["inv"])),
            "recon": recon_metrics(real01, unit(cat["recon"])),
        },
        "lpips": float(cat["lp"].mean()) if "lp" in cat else None,
        "lpips_note": "LPIPS(alex) from local weights" if "lp" in cat else "not computed (no --lpips-weights)",
        "generation": {
            "fd_zsem": (zs := distribution_metrics(cat["z_real"], cat["z_gen"]))["fd"],
            "mmd_zsem": zs["mmd"],
            "fd_pix8": (px := distribution_metrics(pix8(real01), pix8(unit(cat["gen"]))))["fd"],
            "mmd_pix8": px["mmd"],
            "features": "FD/MMD on the model's own z_sem and on 8x8 pooled pixels; not Inception-FID",
        },
    }
    k = min(8, len(x_all))
    labels = ["held-out input", f"inv{steps}: z_sem + inverted x_T", f"recon{steps}: z_sem + random x_T",
              "generated: z_sem of another slice"]
    path = picture_path(store, f"eval-recon-{lm.model_id}", grid)
    result["grid"] = str(save_grid([x_all[:k], cat["inv"][:k], cat["recon"][:k], cat["gen"][:k]], path, labels))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if record:
        from .checkpoint import update_card

        update_card(lm.path, metrics={key: v for key, v in result.items() if key != "grid"})
    title = (f"eval recon: model {result['model_id']}, {result['n']} held-out slices, DDIM {steps} steps; "
             "images on [0, 1]")
    notes = [f"LPIPS: {result['lpips_note']}. {result['generation']['features']}.", f"grid: {result['grid']}"]
    return Report(title, table1(result), result, notes)


def table1(result: dict) -> list[list[str]]:
    """The paper's Table 1 layout (model, encoder, encoding, generation), one row per encoding programme.

    `inv` is the near-exact autoencoding (z_sem + inverted x_T); `recon` shows what z_sem alone carries. LPIPS
    is "n/c" (not computed) without local weights; FD is on features we own, not Inception-FID.
    """
    gen = result["generation"]
    lp = f"{result['lpips']:.3f}" if result["lpips"] is not None else "n/c"
    rows = [["Model", "Encoder", "Encoding LPIPS", "MSE", "PSNR", "SSIM", "Gen. FD-zsem", "FD-pix8"]]
    for name, m in result["encoding"].items():
        rows.append([f"DAE {result['config'] or ''}".strip(), f"DAE encoder ({name})", lp if name == "inv" else "",
                     f"{m['mse']:.4f}", f"{m['psnr']:.2f}", f"{m['ssim']:.3f}",
                     f"{gen['fd_zsem']:.3g}" if name == "inv" else "", f"{gen['fd_pix8']:.3g}" if name == "inv" else ""])
    return rows

