"""Suite-wide test settings: one thread, CPU, runtime shape checks for dposer_cli."""

import os
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

torch.set_num_threads(1)

# Runtime shape checks (conventions §4.3): the jaxtyping annotations of every dposer_cli module are checked
# by beartype. This conftest is the first thing pytest imports, so no module is loaded before the hook;
# production code pays nothing. DPOSER_NO_TYPECHECK=1 turns it off (timing comparisons).
# UNCHECKED: modules whose annotations beartype cannot check yet (keep this list empty; each entry says why).
UNCHECKED: dict[str, str] = {}
# The hook matches names as prefixes, so it is given leaf modules only (package __init__s just re-export).
_PACKAGE = Path(__file__).resolve().parent.parent / "dposer_cli"
_MODULES = (
    ".".join(("dposer_cli", *p.relative_to(_PACKAGE).with_suffix("").parts)) for p in _PACKAGE.rglob("*.py")
)
CHECKED = sorted(m for m in _MODULES if not m.endswith("__init__") and m not in UNCHECKED)
if os.environ.get("DPOSER_NO_TYPECHECK") != "1":
    # is_pep484_tower: an int is a valid `float` (PEP 484, as mypy reads it)
    install_import_hook(CHECKED, "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

from dposer_cli.core.paths import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test when it is not present."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED
