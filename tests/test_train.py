import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from latentstore import checkpoint as ckpt
from latentstore.cli import app
from latentstore.errors import InputError
from latentstore.diffusion import decode_random, reconstruct
from latentstore.model import DiffusionAutoencoder, ModelConfig
from latentstore.slicedata import read_slices
from latentstore.train import TrainConfig, batch_indices, train
from test_checkpoint import assert_no_pickle
from tiny_store import make_store

# lr 1e-3 and a short EMA so that a few dozen CPU steps visibly move a tiny model
FAST = dict(config="tiny", batch_size=8, lr=1e-3, ema_decay=0.9, preview_every=0, preview_steps=2,
            holdout_fraction=0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def trained(store):
    torch.set_num_threads(2)
    cfg = TrainConfig(steps=40, checkpoint_every=20, **{**FAST, "preview_every": 40})
    result = train(store, cfg, out=store / "run", progress=False)
    return result


def test_trained_model_reconstructs_its_slices_better_than_untrained(store, trained):
    lm = ckpt.load_model(trained.model_id, store=store)
    x = lm.preprocess.to_model(read_slices(store, "train", 0.2).images[:8])  # (8, 1, 32, 32)
    torch.manual_seed(FAST.get("seed", 0))
    untrained = DiffusionAutoencoder(ModelConfig.named("tiny")).eval()  # the run's own init (same seed)
    with torch.no_grad():
        mse = {name: {"recon": float(((decode_random(net, x, 5) - x) ** 2).mean()),
                      "inv": float(((reconstruct(net, x, 5) - x) ** 2).mean())}
               for name, net in (("untrained", untrained), ("trained", lm.net))}
    # z_sem + random x_T: only what the encoder learned carries the image (measured ~5x better after 60 steps)
    assert mse["trained"]["recon"] < 0.5 * mse["untrained"]["recon"], mse
    assert mse["trained"]["inv"] < mse["untrained"]["inv"], mse


def test_run_folder_layout_and_no_pickle(trained):
    run = trained.run_dir
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000040"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000020", "step_00000040"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41)) and all(np.isfinite(r["loss"]) for r in log)
    header = json.loads((run / "train_config.json").read_text())
    assert header["train"]["steps"] == 40 and header["model"]["image_size"] == 32
    assert header["preprocess"] == {"hu_min": -500.0, "hu_max": 1300.0, "image_size": 32}
    assert (run / "previews" / "step_00000040.png").is_file()
    card = json.loads((trained.model_dir / "card.json").read_text())
    assert card["steps"] == 40 and card["images_seen"] == 320 and card["train_config"]["ema_decay"] == 0.9
    assert_no_pickle(run)
    assert_no_pickle(trained.model_dir)


def test_resume_continues_the_same_run_bit_identically(store, tmp_path):
    cfg = TrainConfig(steps=6, checkpoint_every=3, **{**FAST, "batch_size": 4})
    whole = train(store, cfg, out=tmp_path / "whole", progress=False, register=False)
    # "interrupted" after 3 steps, then resumed to 6 (with another checkpoint cadence, which is allowed)
    train(store, TrainConfig(**{**cfg.__dict__, "steps": 3}), out=tmp_path / "split", progress=False,
          register=False)
    resumed = train(store, TrainConfig(**{**cfg.__dict__, "checkpoint_every": 2}), out=tmp_path / "split",
                    resume=True, progress=False, register=False)
    assert resumed.step == whole.step == 6
    logs = [[json.loads(x)["loss"] for x in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("whole", "split")]
    assert len(logs[0]) == 6 and logs[0] == logs[1]
    for name in ("model", "ema", "optimizer"):
        a = ckpt.load_tensors(tmp_path / "whole" / "checkpoints" / "step_00000006" / f"{name}.safetensors")
        b = ckpt.load_tensors(tmp_path / "split" / "checkpoints" / "step_00000006" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_resume_refuses_a_changed_recipe_and_fresh_runs_refuse_old_folders(store, tmp_path):
    from latentstore.errors import InputError

    cfg = TrainConfig(steps=1, **{**FAST, "batch_size": 2})
    train(store, cfg, out=tmp_path / "r", progress=False, register=False)
    with pytest.raises(InputError, match="--resume"):
        train(store, cfg, out=tmp_path / "r", progress=False, register=False)
    with pytest.raises(InputError, match="lr"):
        train(store, TrainConfig(**{**cfg.__dict__, "lr": 5e-4, "steps": 2}), out=tmp_path / "r",
              resume=True, progress=False, register=False)


def test_batches_walk_seeded_epochs():
    n, b = 10, 4
    first_epoch = np.concatenate([batch_indices(n, b, seed=1, step=s) for s in range(5)])[:n]
    assert sorted(first_epoch) == list(range(n))  # every slice once per epoch, even across a batch boundary
    assert np.array_equal(batch_indices(n, b, 1, 3), batch_indices(n, b, 1, 3))
    assert not np.array_equal(batch_indices(n, b, 1, 0), batch_indices(n, b, 2, 0))


def test_cli_train_end_to_end(store, tmp_path):
    runner = CliRunner()
    args = ["train", "--config", "tiny", "--steps", "2", "--batch-size", "2", "--preview-every", "0",
            "--store", str(store), "--out", str(tmp_path / "cli"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["steps"] == 2 and (store / "models" / summary["model_id"] / "model.safetensors").is_file()
    assert ckpt.load_model(summary["model_id"], store=store).model_config == ModelConfig.named("tiny")
    # --resume to a longer total keeps the run's own settings; changing the model config is refused
    more = runner.invoke(app, ["train", "--resume", "--steps", "3", *args[5:]])
    assert more.exit_code == 0, more.output
    assert len((tmp_path / "cli" / "log.jsonl").read_text().splitlines()) == 3
    clash = runner.invoke(app, ["train", "--resume", "--config", "small", *args[5:]])
    assert clash.exit_code == 2 and "config" in clash.output


def test_paper_config_defaults_to_table5_and_recipe_knobs_are_checked():
    from latentstore.train import config_defaults, sample_t

    paper = TrainConfig(**config_defaults("paper"))
    assert (paper.batch_size, paper.lr, paper.ema_decay, paper.ema_warmup) == (64, 1e-4, 0.9999, False)
    assert paper.steps * paper.batch_size == 12_000_000
    assert config_defaults("small") == {"config": "small"}
    with pytest.raises(ValueError, match="t_sampling"):
        TrainConfig(t_sampling="late")
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        TrainConfig(encoder_lr_scale=-1)
    torch.manual_seed(0)
    mid = sample_t("mid", 20000, "cpu").float()
    torch.manual_seed(0)
    uni = sample_t("uniform", 20000, "cpu").float()
    assert 0 <= mid.min() and mid.max() < 1000 and abs(mid.mean() - 500) < 10 and abs(uni.mean() - 500) < 10
    assert ((mid < 100) | (mid >= 900)).float().mean() < 0.06 < ((uni < 100) | (uni >= 900)).float().mean()


def test_encoder_lr_scale_sets_the_encoders_learning_rate(tmp_path):
    store = make_store(tmp_path / "s", n_scans=4, levels=2)
    cfg = TrainConfig(steps=1, **{**FAST, "batch_size": 2, "encoder_lr_scale": 0.1})
    result = train(store, cfg, out=tmp_path / "r", progress=False, register=False)
    from safetensors import safe_open

    with safe_open(str(result.run_dir / "checkpoints" / "step_00000001" / "optimizer.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["json"])["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])


def test_latent_prior_adds_to_the_loss_and_trains(tmp_path):
    store = make_store(tmp_path / "s", n_scans=4, levels=2)
    base = dict(steps=2, **{**FAST, "batch_size": 4})
    plain = train(store, TrainConfig(**base), out=tmp_path / "a", progress=False, register=False)
    prior = train(store, TrainConfig(**base, latent_prior=1.0), out=tmp_path / "b", progress=False,
                  register=False)
    assert np.isfinite(prior.final_loss) and prior.final_loss > plain.final_loss  # + a positive MMD term
    with pytest.raises(ValueError, match="latent_prior"):
        TrainConfig(latent_prior=-1)


def test_encoder_lr_scale_zero_freezes_the_encoder_at_its_init(tmp_path):
    store = make_store(tmp_path / "s", n_scans=4, levels=2)
    result = train(store, TrainConfig(steps=2, **{**FAST, "batch_size": 4, "encoder_lr_scale": 0.0}),
                   out=tmp_path / "r", progress=False)
    torch.manual_seed(FAST.get("seed", 0))
    init = DiffusionAutoencoder(ModelConfig.named("tiny"))
    trained = ckpt.load_model(result.model_id, store=store).net
    for a, b in zip(init.encoder.state_dict().values(), trained.encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(init.unet.state_dict().values(), trained.unet.state_dict().values()))


def test_init_from_starts_a_run_from_a_registered_model(tmp_path):
    store = make_store(tmp_path / "s", n_scans=4, levels=2)
    first = train(store, TrainConfig(steps=2, **{**FAST, "batch_size": 4, "encoder_lr_scale": 0.0}),
                  out=tmp_path / "a", progress=False)
    second = train(store, TrainConfig(steps=1, **{**FAST, "batch_size": 4, "lr": 1e-12, "init_from": first.model_id}), out=tmp_path / "b", progress=False)
    a, b = ckpt.load_model(first.model_id, store=store).net, ckpt.load_model(second.model_id, store=store).net
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6)  # one step at lr 1e-12 from the first model's weights
    other = ckpt.register_model(str(store), DiffusionAutoencoder(ModelConfig(**{**ModelConfig.named("tiny").__dict__,
                                "z_dim": 16})).state_dict(), ModelConfig(**{**ModelConfig.named("tiny").__dict__, "z_dim": 16}),
                                ckpt.load_model(first.model_id, store=store).preprocess)
    with pytest.raises(InputError, match="init-from"):
        train(store, TrainConfig(steps=1, **{**FAST, "batch_size": 4, "init_from": str(other)}),
              out=tmp_path / "c", progress=False)


def test_a_run_started_before_a_field_existed_still_resumes(tmp_path):
    store = make_store(tmp_path / "s", n_scans=4, levels=2)
    cfg = TrainConfig(steps=1, **{**FAST, "batch_size": 2})
    train(store, cfg, out=tmp_path / "r", progress=False, register=False)
    path = tmp_path / "r" / "train_config.json"
    header = json.loads(path.read_text())
    for newer in ("init_from", "latent_prior", "t_sampling"):
        del header["train"][newer]
    path.write_text(json.dumps(header))
    again = train(store, TrainConfig(**{**cfg.__dict__, "steps": 2}), out=tmp_path / "r", resume=True,
                  progress=False, register=False)
    assert again.step == 2
