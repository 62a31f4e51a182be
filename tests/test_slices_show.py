"""`latentstore slices show`: a PNG grid with one tile per stored slice, superior level first.

The store is built with the ingest task function called in-process (no Ray), so these tests stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ingest_phantom import make_archive, write_scan
from latentstore.cli import app
from latentstore.ingest import SlicingConfig, scan_archive
from latentstore.ingest.run import ingest_scan
from latentstore.pictures import BACKGROUND, COLS, TILE, WINDOW_HU, tile_origin
from latentstore.slices import read_slices, show
from latentstore.ingest.privacy import Redactor
from latentstore.store import Store, patient_key

runner = CliRunner()
SPINE = {lab: (20.0, 24.0, float(z)) for lab, z in zip(range(12, 20), range(92, 4, -11))}  # T5..T12, 8 levels


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("show")
    archive, store = make_archive(root / "archive", 2), root / "store"
    write_scan(archive, "sub-long", seed=5, centroids=SPINE)
    st, cfg = Store(store), SlicingConfig()
    salt = st.salt()
    red = Redactor(archive, salt, "site-test")
    sources, errors = scan_archive(archive, salt)
    assert not errors
    for src in sources:
        ids = (red.scan(src.name), red.file(src.ct), "site-test", patient_key(src.patient, salt, "site-test"))
        result = ingest_scan(src, ids, cfg, st.root, "run")
        assert result["kind"] == "staged", result
        st.slices.publish("run", result["part"])
    return store


def filled_tiles(png: Path, max_tiles: int) -> int:
    """How many grid cells of the PNG hold a picture (not plain background)."""
    img = np.asarray(Image.open(png).convert("RGB"))
    n = 0
    for k in range(max_tiles):
        x, y = tile_origin(k)
        cell = img[y : y + TILE, x : x + TILE]
        if cell.shape[:2] == (TILE, TILE) and not np.all(cell == BACKGROUND):
            n += 1
    return n


def test_scan_grid_has_one_tile_per_level_in_order(store, tmp_path):
    shown = show(store, scan="sub-long", out=tmp_path / "long.png")
    assert shown.levels == ["T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12"]
    img = Image.open(shown.path)
    assert img.format == "PNG"
    assert filled_tiles(shown.path, 2 * COLS) == 8  # 6 on the first row, 2 on the second, 4 cells empty
    # The tile is the stored image in the bone window: compare one tile pixel with the stored HU.
    row = read_slices(store, slice_ids=[shown.slice_ids[0]]).to_pylist()[0]
    hu = np.asarray(row["image"], np.int16).reshape(96, 96)
    x, y = tile_origin(0)
    expect = np.clip((hu[48, 48] - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]) * 255, 0, 255)
    assert abs(int(np.asarray(img.convert("L"))[y + 97, x + 97]) - expect) <= 1
    # Asked for by the archive's name, stored under the pseudonym: the picture in the store is named by it.
    default = show(store, scan="sub-long")
    assert default.path.parent == Path(store) / "pictures" and default.path.name.startswith("scan-")
    assert "sub-long" not in str(default.path)


def test_single_slice_and_cli(store, tmp_path):
    sid = read_slices(store, scan_id="sub-p001", columns=["slice_id"]).column("slice_id")[1].as_py()
    out = tmp_path / "one.png"
    result = runner.invoke(app, ["slices", "show", str(sid), "--store", str(store), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["slice_ids"] == [sid] and info["levels"] == ["L2"] and Path(info["path"]) == out
    assert filled_tiles(out, COLS) == 1

    result = runner.invoke(app, ["slices", "show", "--scan-id", "sub-p000", "--store", str(store), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0 and "3 slice(s) (L1, L2, L3)" in result.stdout
    assert filled_tiles(tmp_path / "s.png", COLS) == 3


@pytest.mark.parametrize(
    "args, code",
    [(["123"], 2), (["--scan-id", "sub-nobody"], 2), ([], 2), (["1", "--scan-id", "sub-p000"], 2)],
)
def test_bad_requests_exit_with_input_error(store, tmp_path, args, code):
    result = runner.invoke(app, ["slices", "show", *args, "--store", str(store), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == code, result.output
    assert "error:" in result.stderr and not (tmp_path / "x.png").exists()


def test_empty_store_is_a_store_error(tmp_path):
    result = runner.invoke(app, ["slices", "show", "--scan-id", "a", "--store", str(tmp_path / "none")])
    assert result.exit_code == 3 and "latentstore ingest" in result.stderr
