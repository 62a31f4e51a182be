"""A store whose Parquet lives in an object store (`s3://bucket/prefix`), against a local S3 server (moto):
ingest, encode and sql work; the catalog, locks and salt live in the local control folder."""

import json
import os
import subprocess
import sys

import pytest

moto_server = pytest.importorskip("moto.server")

from ingest_phantom import make_archive  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1").items():
        monkeypatch.setenv(k, v)
    import pyarrow.fs as pafs

    uri = f"s3://scans/site-a?endpoint_override=http://{host}:{port}&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    fs.create_dir("scans")
    yield uri, fs
    server.stop()


def test_ingest_encode_and_sql_on_an_object_store(tmp_path, s3):
    import pyarrow.fs as pafs

    uri, fs = s3
    archive = make_archive(tmp_path / "archive", 2)
    env = {**os.environ, "LATENTSTORE_CONTROL": str(tmp_path / "control"), "RAY_ADDRESS": ""}
    cli = [sys.executable, "-m", "latentstore.cli"]
    ing = subprocess.run([*cli, "ingest", str(archive), "--store", uri, "--model", "default", "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ing.returncode == 0, ing.stderr[-3000:]
    out = json.loads(ing.stdout)
    assert out["slices_written"] == 6 and out["encode"]["encoded"] == 6
    objects = [i.path for i in fs.get_file_info(pafs.FileSelector("scans/site-a", recursive=True))
               if i.type == pafs.FileType.File]
    assert sum("/slices/part-" in p for p in objects) == 2 and sum("/latents/model_id=" in p for p in objects) == 1
    assert not any("_staging" in p for p in objects)  # staged objects were moved or removed
    assert (tmp_path / "control" / "catalog.duckdb").is_file() and (tmp_path / "control" / "salt").is_file()
    assert not any(p.endswith(("catalog.duckdb", "/salt")) for p in objects)  # the salt never enters the bucket
    q = "SELECT level_name, model_id, len(z_sem) AS w FROM slices JOIN latents USING (slice_id) ORDER BY level_name"
    res = subprocess.run([*cli, "sql", q, "--store", uri, "--format", "json"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert [r["level_name"] for r in rows] == ["L1", "L1", "L2", "L2", "L3", "L3"] and {r["w"] for r in rows} == {512}
    # a rerun adds nothing
    again = subprocess.run([*cli, "encode", "--store", uri, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["encoded"] == 0
