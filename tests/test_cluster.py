"""Beyond one machine: a multi-node Ray cluster with logical GPUs (one encode actor per GPU, none on the
GPU-less head), a CPU-only cluster (CPU actors), and a real separate head started with `ray start`."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import latentstore
from latentstore.encode import encode
from ingest_phantom import make_archive
from tiny_store import make_store

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_cluster():
    """`ray.cluster_utils.Cluster`: a head without GPUs; tests add worker nodes. Torn down after."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _nodes(summary) -> dict:
    import json

    where = [json.loads(w) for w in summary.placement]
    return {w["node"]: w for w in where}


def test_one_actor_per_gpu_each_with_its_own_device_none_on_the_gpu_less_head(tmp_path, ray_cluster):
    import ray

    for _ in range(2):
        ray_cluster.add_node(num_cpus=2, num_gpus=1)
    ray_cluster.wait_for_nodes()
    ray.init(address=ray_cluster.address)
    store = latentstore.connect(make_store(tmp_path / "s", n_scans=40, parts=10))
    summary = encode(store, batch_size=4, progress=False)  # 40 batches: both actors get work
    assert (summary.actors, summary.encoded) == (2, 160)
    nodes = _nodes(summary)
    head_raylet = str(ray_cluster.head_node.all_processes["raylet"][0].process.pid)
    assert head_raylet not in nodes  # no actor on the node without a GPU
    assert len(nodes) == 2 and all(w["cuda_visible_devices"] == "0" for w in nodes.values())
    # logical GPUs: each actor was given a device by Ray and fell back to the CPU (no CUDA here)
    assert {w["device"] for w in nodes.values()} == {"cpu"}


def test_cpu_only_cluster_uses_cpu_actors(tmp_path, ray_cluster):
    import ray

    ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    ray.init(address=ray_cluster.address)
    store = latentstore.connect(make_store(tmp_path / "s", n_scans=4, parts=2))
    summary = encode(store, progress=False)
    assert summary.encoded == 16 and summary.device == "cpu"
    assert all(w["cuda_visible_devices"] in (None, "") for w in _nodes(summary).values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_ingest_and_encode_against_a_separate_head(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    before = _ray_processes()
    bin_dir = Path(sys.executable).parent
    ray_cli = shutil.which("ray", path=str(bin_dir)) or str(bin_dir / "ray")
    cli = [sys.executable, "-m", "latentstore.cli"]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # `ray start` 2.60 turns token authentication on for a local head; clients must say so to send the token
    # (~/.ray/auth_token), as docs.ray.io/en/latest/ray-security/token-auth.html describes.
    env["RAY_AUTH_MODE"] = "token"
    # `ray start` does not create a token (ray.init does, in ~/.ray/auth_token): on a fresh machine there
    # is none yet, so head and clients share one through the environment.
    env.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="ls-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                            f"--temp-dir={temp_dir}", "--disable-usage-stats"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert start.returncode == 0, start.stderr
    address = f"127.0.0.1:{port}"
    try:
        archive = make_archive(tmp_path / "archive", 2)
        store = tmp_path / "store"
        ing = subprocess.run([*cli, "ingest", str(archive), "--store", str(store), "--address", address, "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert ing.returncode == 0, ing.stderr
        enc = subprocess.run([*cli, "encode", "--store", str(store), "--address", address, "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert enc.returncode == 0, enc.stderr
        st = latentstore.connect(store)
        n = st.sql("SELECT count(*) AS n FROM latents JOIN slices USING (slice_id)").column("n")[0].as_py()
        assert n == 6  # 2 scans x L1-L3
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=120)
    deadline = time.monotonic() + 20
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_ray_processes() - before), "a Ray process outlived `ray stop`"
    shutil.rmtree(temp_dir, ignore_errors=True)
