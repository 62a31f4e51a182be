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
