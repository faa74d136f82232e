"""Suite-wide test settings: one thread, CPU, runtime shape checks for dposer_cli."""

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from dposer_cli.core.paths import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test when it is not present."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED
