"""Render fixtures: posed stick figures, a sphere, and whether pyrender (EGL) works here."""

import numpy as np
import pytest

from dposer_cli.render import scene
from tests.render._figures import PARENTS, POSES, pose_joints, stick_mesh


@pytest.fixture(scope="session")
def figures() -> list[dict[str, np.ndarray]]:
    """Six posed stick figures: {'vertices', 'faces', 'joints', 'parents'}."""
    out = []
    for kw in POSES:
        joints = pose_joints(**kw)
        v, f = stick_mesh(joints)
        out.append({"vertices": v, "faces": f, "joints": joints, "parents": PARENTS})
    return out


@pytest.fixture(scope="session")
def sphere() -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


@pytest.fixture(scope="session")
def has_pyrender() -> bool:
    return scene._probe_pyrender()[0]


@pytest.fixture
def need_pyrender(has_pyrender: bool) -> None:
    if not has_pyrender:
        pytest.skip(f"pyrender offscreen (EGL) unavailable: {scene._probe.get('reason')}")


@pytest.fixture(params=["soft", "pyrender"])
def renderer(request, has_pyrender: bool) -> str:
    """Each backend in turn; pyrender is skipped where no offscreen GL context opens."""
    if request.param == "pyrender" and not has_pyrender:
        pytest.skip(f"pyrender offscreen (EGL) unavailable: {scene._probe.get('reason')}")
    return request.param
