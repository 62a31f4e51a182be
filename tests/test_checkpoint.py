import json
import zipfile
from pathlib import Path

import pytest
import torch

from latentstore import checkpoint as ckpt
from latentstore.errors import InputError, StoreError
from latentstore.model import DiffusionAutoencoder, ModelConfig
from latentstore.slicedata import Preprocess

PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}


def assert_no_pickle(folder: Path) -> None:
    """No file under `folder` is a pickle or a torch.save zip (whose payload is a pickle)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        head = p.read_bytes()[:4]
        assert head[:2] not in PICKLE_PROTOCOLS, p
        if zipfile.is_zipfile(p):
            assert not any(n.endswith(".pkl") for n in zipfile.ZipFile(p).namelist()), p


def tiny_model(seed: int = 0) -> DiffusionAutoencoder:
    torch.manual_seed(seed)
    net = DiffusionAutoencoder(ModelConfig.named("tiny"))
    with torch.no_grad():  # zero-initialised layers would make a weak round-trip test: randomise everything
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def test_save_load_round_trip_is_bit_exact(tmp_path):
    net = tiny_model()
    pre = Preprocess(-500, 1300, image_size=32)
    model_id = ckpt.save_model(tmp_path / "m", net.state_dict(), net.config, pre, {"steps": 3, "metrics": {"mse": 0.1}})
    lm = ckpt.load_model(tmp_path / "m")
    assert lm.model_id == model_id and len(model_id) == 16
    assert lm.model_config == net.config and lm.preprocess == pre
    assert lm.card["steps"] == 3 and lm.card["metrics"] == {"mse": 0.1}
    a, b = net.state_dict(), lm.net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert not lm.net.training
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net.eval().encoder(x), lm.net.encoder(x))
    assert "| steps | 3 |" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert_no_pickle(tmp_path / "m")


def test_model_id_is_a_content_hash(tmp_path):
    net = tiny_model()
    pre = Preprocess(image_size=32)
    first = ckpt.save_model(tmp_path / "a", net.state_dict(), net.config, pre)
    assert ckpt.save_model(tmp_path / "b", net.state_dict(), net.config, pre, {"other": "card"}) == first
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["unet.out.2.bias"][0] += 1e-6
    assert ckpt.save_model(tmp_path / "c", state, net.config, pre) != first
    assert ckpt.save_model(tmp_path / "d", net.state_dict(), net.config, Preprocess(-1000, 1000, 32)) != first


def test_register_and_resolve_by_id(tmp_path):
    net = tiny_model()
    path = ckpt.register_model(tmp_path, net.state_dict(), net.config, Preprocess(image_size=32), {"steps": 1})
    assert path.parent == tmp_path / "models" and (path / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith("_")]  # staging cleaned up
    assert ckpt.load_model(path.name, store=tmp_path).model_id == path.name
    # registering the same weights again keeps one folder and refreshes the card
    again = ckpt.register_model(tmp_path, net.state_dict(), net.config, Preprocess(image_size=32), {"steps": 2})
    assert again == path and json.loads((path / "card.json").read_text())["steps"] == 2
    card = ckpt.update_card(path, metrics={"psnr": 30.0})
    assert card["metrics"] == {"psnr": 30.0} and ckpt.load_model(path).card["metrics"] == {"psnr": 30.0}
    with pytest.raises(StoreError):
        ckpt.load_model("0123456789abcdef", store=tmp_path)


def test_unknown_config_fields_are_refused(tmp_path):
    net = tiny_model()
    ckpt.save_model(tmp_path, net.state_dict(), net.config, Preprocess(image_size=32))
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["from_the_future"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError):
        ckpt.load_model(tmp_path)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    net = tiny_model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        net.encoder(torch.rand(2, 1, 32, 32)).square().mean().backward()
        opt.step()
    ckpt.save_optimizer(tmp_path / "opt.safetensors", opt)
    fresh = torch.optim.Adam(net.parameters(), lr=1.0)
    ckpt.load_optimizer(tmp_path / "opt.safetensors", fresh)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, state in a["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["state"][i][k]), (i, k)
    assert_no_pickle(tmp_path)


def test_default_model_ships_and_matches_its_id():
    folder = ckpt.default_model_dir()
    if not (folder / "model.safetensors").is_file():
        pytest.skip("no default model in this checkout yet")
    lm = ckpt.load_model(None)
    state = lm.net.state_dict()
    config = {"model": ckpt.config_to_dict(lm.model_config), "preprocess": lm.preprocess.to_dict()}
    assert ckpt.tensors_hash(state, config) == lm.model_id  # weights intact, id honest
    assert lm.card.get("metrics"), "the shipped card records its eval recon metrics"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 25 * 2**20
    assert_no_pickle(folder)
