"""Bad model folders and bad store paths are one clear error, never a traceback."""

import shutil

import pytest
from typer.testing import CliRunner

from latentstore import checkpoint as ckpt
from latentstore.cli import app
from latentstore.errors import InputError, StoreError

runner = CliRunner()


@pytest.fixture
def model_copy(tmp_path):
    src = ckpt.default_model_dir()
    if not (src / "model.safetensors").is_file():
        pytest.skip("no default model in this checkout")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_a_store_error(model_copy):
    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(StoreError, match="not a loadable model"):
        ckpt.load_model(model_copy)


def test_broken_config_is_a_store_error(model_copy):
    (model_copy / "config.json").write_text("{")
    with pytest.raises(StoreError, match="not a loadable model"):
        ckpt.load_model(model_copy)


def test_recording_into_the_shipped_card_is_refused(model_copy):
    before = (ckpt.default_model_dir() / "card.json").read_bytes()
    with pytest.raises(InputError, match="--record needs --model"):
        ckpt.update_card(ckpt.default_model_dir(), metrics={"psnr": 1.0})
    assert (ckpt.default_model_dir() / "card.json").read_bytes() == before
    ckpt.update_card(model_copy, metrics={"psnr": 1.0})  # a copy is the user's own
    assert '"psnr": 1.0' in (model_copy / "card.json").read_text()


def test_store_that_is_a_file_is_one_line_exit_3(tmp_path):
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "sub-01_ct.nii.gz").write_bytes(b"not a scan, but named like one")
    (tmp_path / "archive" / "sub-01_ctd.json").write_text('[{"direction": ["P", "I", "R"]}, {"label": 20, "X": 1, "Y": 2, "Z": 3}]')
    (tmp_path / "store").write_text("not a folder")
    result = runner.invoke(app, ["ingest", str(tmp_path / "archive"), "--store", str(tmp_path / "store")])
    assert result.exit_code == 3, result.output
    assert "cannot use" in result.output and "Traceback" not in result.output
    assert (tmp_path / "store").read_text() == "not a folder"


def test_out_of_range_slice_id_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["slices", "show", "99999999999999999999", "--store", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "out of range" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_archive_without_scans_is_exit_2_and_creates_no_store(tmp_path, content):
    archive = tmp_path / "archive"
    archive.mkdir()
    if content:
        (archive / content).write_text("a note, not a scan")
    result = runner.invoke(app, ["ingest", str(archive), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    assert "no usable CT scan" in result.output and "nothing was written" in result.output
    assert not (tmp_path / "store").exists()
