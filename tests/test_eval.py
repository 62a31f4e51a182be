import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from latentstore.cli import app
from latentstore.errors import InputError
from latentstore.eval_recon import distribution_metrics, eval_recon, recon_metrics, table1
from latentstore.train import TrainConfig, train
from tiny_store import make_store


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model trained for a few steps (eval plumbing, not quality) in a tiny store."""
    store = make_store(tmp_path_factory.mktemp("store"))
    cfg = TrainConfig(config="tiny", steps=4, batch_size=4, lr=1e-3, preview_every=0, holdout_fraction=0.2)
    return store, train(store, cfg, out=store / "run", progress=False).model_id


def test_recon_metrics_on_known_pairs():
    x = torch.rand(3, 1, 32, 32)
    same = recon_metrics(x, x)
    assert same["mse"] == 0 and same["ssim"] == pytest.approx(1.0, abs=1e-5) and same["psnr"] > 80
    noisy = recon_metrics(x, (x + 0.1).clamp(0, 1))
    assert 0 < noisy["mse"] < 0.01 and 20 < noisy["psnr"] < 30 and noisy["ssim"] < 1


def test_distribution_metrics_separate_shifted_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g)
    near, far = distribution_metrics(a, b), distribution_metrics(a, b + 3)
    assert near["fd"] < 1 and far["fd"] > 30  # FD of a mean shift of 3 in 4 dims is ~36
    assert abs(near["mmd"]) < 0.5 and far["mmd"] > 30


def test_eval_recon_reports_table1_and_writes_a_grid(model, tmp_path):
    store, model_id = model
    result = eval_recon(store, model_id, steps=2, n=6, batch_size=4, grid=tmp_path / "grid.png")
    assert result["model_id"] == model_id and result["n"] == 6 and result["holdout_fraction"] == 0.2
    for programme in ("inv", "recon"):
        m = result["encoding"][programme]
        assert m["mse"] >= 0 and -1 <= m["ssim"] <= 1 and m["psnr"] > 0
    assert result["lpips"] is None and "not computed" in result["lpips_note"]
    assert set(result["generation"]) >= {"fd_zsem", "mmd_zsem", "fd_pix8", "mmd_pix8"}
    assert "not Inception-FID" in result["generation"]["features"]
    grid = Image.open(result["grid"])
    assert grid.size[0] == 6 * (96 + 2) and grid.size[1] == 4 * (96 + 2 + 12)  # 4 rows of 6 tiles, 32 px x3
    header, inv, recon = table1(result)
    assert header[:3] == ["Model", "Encoder", "Encoding LPIPS"] and inv[1] == "DAE encoder (inv)" and inv[2] == "n/c"
    assert recon[1] == "DAE encoder (recon)" and float(recon[3]) == pytest.approx(result["encoding"]["recon"]["mse"], abs=1e-4)


def test_lpips_needs_local_weights(model, tmp_path):
    store, model_id = model
    with pytest.raises(InputError, match="lpips-weights"):
        eval_recon(store, model_id, steps=1, n=2, lpips_weights=tmp_path / "missing.pth")


def test_cli_eval_recon_json(model, tmp_path):
    store, model_id = model
    grid = tmp_path / "g.png"
    args = ["eval", "recon", "--model", model_id, "--store", str(store), "--steps", "1", "--n", "4", "--grid", str(grid)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model_id"] == model_id and data["steps"] == 1 and grid.is_file()
    table = CliRunner().invoke(app, [*args, "--record"])
    assert table.exit_code == 0 and "held-out slices" in table.output and "not computed" in table.output
    card = json.loads((store / "models" / model_id / "card.json").read_text())
    assert card["metrics"]["encoding"]["inv"]["mse"] >= 0 and card["metrics"]["n"] == 4
    missing = CliRunner().invoke(app, ["eval", "recon", "--model", "feedfacefeedface", "--store", str(store)])
    assert missing.exit_code == 3
