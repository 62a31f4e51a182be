"""Shared fixtures. Real sample files live beside the checkout in ../shared/data/real and are never copied
into the repository; tests that need them skip cleanly when that folder is absent."""

import os
from pathlib import Path

# On a shared 2-core machine OpenMP's busy-waiting threads make small torch ops 3-70x slower; this must
# be set before torch is first imported, which happens after conftest is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    """`../shared/data/real`, or skip the test when it is not there (a user's fresh clone)."""
    if not REAL.is_dir():
        pytest.skip(f"real sample data not found at {REAL}")
    return REAL


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; a Ray that is already running is used and left running."""
    import logging

    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        # address="local": a fresh Ray even when a `ray start` head runs on this machine (another test run)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=256 * 1024**2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def no_env_salt(monkeypatch):
    """The store's own salt file, not one from the environment."""
    monkeypatch.delenv("LATENTSTORE_SALT", raising=False)
