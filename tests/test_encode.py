"""encode: slices -> latents/model_id=<id>/ on Ray actors; exactly once, resumable, joinable in SQL."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import latentstore
from latentstore import encode as enc
from latentstore.checkpoint import load_model
from latentstore.cli import app
from latentstore.diffusion import encode as dae_encode
from latentstore.errors import StoreError
from latentstore.store import Dataset
from tiny_store import make_store

runner = CliRunner()


def _z_by_id(store, model_id):
    t = store.latents(model_id).read()
    return dict(zip(t.column("slice_id").to_pylist(), np.stack(t.column("z_sem").to_pylist())))


def test_encoder_is_the_model_forward_without_ray(tmp_path):
    store = latentstore.connect(make_store(tmp_path / "s", n_scans=2))
    batch = store.slices.read(columns=["slice_id", "image"])
    out = enc.Encoder(str(load_model().path), threads=1)(batch)
    assert out.column_names == ["slice_id", "z_sem", enc.ACTOR_COLUMN]
    assert str(out.schema.field("z_sem").type) == "fixed_size_list<item: float>[512]"
    lm = load_model()
    images = np.stack(batch.column("image").to_pylist()).reshape(-1, 96, 96)
    with torch.no_grad():
        want = dae_encode(lm.net, lm.preprocess.to_model(images)).numpy()
    np.testing.assert_allclose(np.stack(out.column("z_sem").to_pylist()), want, atol=1e-5)
    assert out.column("slice_id").to_pylist() == batch.column("slice_id").to_pylist()


def test_encode_writes_every_slice_once_and_a_rerun_is_a_no_op(tmp_path, ray_local):
    store = latentstore.connect(make_store(tmp_path / "s", n_scans=10, parts=3))
    first = enc.encode(store, progress=False)
    assert (first.slices, first.encoded, first.already_encoded, first.status) == (40, 40, 0, "ok")
    assert sum(first.placement.values()) == 40 and first.device == "cpu"
    latents = store.latents(first.model_id)
    parts = latents.parts()
    meta = latents.metadata(parts[0])
    assert meta["model_id"] == first.model_id and meta["preprocess_hash"] == enc.preprocess_hash(load_model().preprocess)
    f = pq.ParquetFile(latents.part_path(parts[0]))
    assert str(f.schema_arrow.field("z_sem").type) == "fixed_size_list<element: float not null>[512]" or \
        f.schema_arrow.field("z_sem").type.list_size == 512
    col = f.metadata.row_group(0).column(1)
    assert col.compression == "ZSTD" and "BYTE_STREAM_SPLIT" in col.encodings
    # a rerun finds everything encoded and starts no actors
    again = enc.encode(store, progress=False)
    assert (again.encoded, again.already_encoded, again.actors) == (0, 40, 0)
    assert latents.parts() == parts
    # the catalog sees it: joinable with slices, typed as FLOAT[512], one row per slice
    got = store.sql("SELECT count(*) AS n, count(DISTINCT slice_id) AS d, any_value(len(z_sem)) AS w, "
                    "any_value(model_id) AS m FROM latents JOIN slices USING (slice_id)").to_pylist()[0]
    assert got == {"n": 40, "d": 40, "w": 512, "m": first.model_id}
    runs = store.sql("SELECT status FROM runs WHERE stage = 'encode' ORDER BY started").column("status").to_pylist()
    assert runs == ["ok", "ok"]


def test_new_slices_are_encoded_incrementally(tmp_path, ray_local):
    root = make_store(tmp_path / "s", n_scans=6, parts=2)
    store = latentstore.connect(root)
    first = enc.encode(store, progress=False)
    more = make_store(tmp_path / "more", n_scans=9, seed=1, first=6)  # other scans, other slice ids
    (root / "slices" / "part-new.parquet").write_bytes((more / "slices" / "part.parquet").read_bytes())
    second = enc.encode(store, progress=False)
    assert (second.already_encoded, second.encoded) == (first.encoded, 36)
    assert store.latents(first.model_id).count() == 24 + 36


def test_a_crash_between_parts_then_rerun_equals_one_clean_run(tmp_path, ray_local, monkeypatch):
    clean = latentstore.connect(make_store(tmp_path / "clean", n_scans=10, parts=3))
    crashed = latentstore.connect(make_store(tmp_path / "crashed", n_scans=10, parts=3))
    monkeypatch.setattr(enc, "FILE_ROWS", 16)  # several latent files per run
    model_id = enc.encode(clean, progress=False).model_id
    real, calls = Dataset.publish, []

    def publish_then_die(self, run_id, name):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("simulated crash of the driver")
        return real(self, run_id, name)

    monkeypatch.setattr(Dataset, "publish", publish_then_die)
    with pytest.raises(RuntimeError, match="simulated crash"):
        enc.encode(crashed, progress=False)
    monkeypatch.setattr(Dataset, "publish", real)
    assert crashed.latents(model_id).count() == 16  # one complete file visible, nothing partial
    assert crashed.sql("SELECT status FROM runs").column("status").to_pylist() == ["failed"]
    rerun = enc.encode(crashed, progress=False)
    assert (rerun.already_encoded, rerun.encoded, rerun.staging_dropped) == (16, 24, 1)
    a, b = _z_by_id(clean, model_id), _z_by_id(crashed, model_id)
    assert sorted(a) == sorted(b) and len(b) == 40
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)
    assert not any(p.name == "_staging" and any(p.iterdir()) for p in (tmp_path / "crashed" / "latents").rglob("_staging"))


def test_cli_encode_json_and_errors(tmp_path, ray_local):
    root = make_store(tmp_path / "s", n_scans=3)
    result = runner.invoke(app, ["encode", "--store", str(root), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["encoded"] == 12 and summary["status"] == "ok"
    empty = runner.invoke(app, ["encode", "--store", str(tmp_path / "none")])
    assert empty.exit_code == 3 and "no slices" in empty.output
    bad = runner.invoke(app, ["encode", "--store", str(root), "--model", "0123456789abcdef"])
    assert bad.exit_code == 3 and "no model" in bad.output


def test_actor_pool_placement_rules():
    from latentstore.cluster import actor_pool

    gpu = actor_pool(n_gpus=4, n_cpus=16)
    assert (gpu["size"], gpu["num_gpus"]) == (4, 1)
    cpu = actor_pool(n_gpus=0, n_cpus=2)
    assert (cpu["size"], cpu["num_gpus"], cpu["threads"]) == (2, 0, 1) and 2 * cpu["num_cpus"] <= 1  # a CPU left to reads
    one = actor_pool(n_gpus=0, n_cpus=2, actors=1)
    assert one["threads"] == 2 and one["num_cpus"] <= 1
    with pytest.raises(StoreError, match="need at least"):
        actor_pool(n_gpus=0, n_cpus=1, actors=1)
    spread = actor_pool(n_gpus=0, n_cpus=8, node_cpus=2, actors=1)  # four 2-CPU nodes: an actor fits on one
    assert spread["num_cpus"] <= 1 and spread["threads"] == 2
