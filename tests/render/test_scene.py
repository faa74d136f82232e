"""Backend choice, camera framing and shading helpers."""

from pathlib import Path

import numpy as np
import pytest

from dposer_cli.core.errors import InputError, UnavailableError
from dposer_cli.render import scene, shading


def test_soft_is_always_available():
    assert scene.select_renderer("soft") == "soft"


def test_auto_is_soft_without_probing_opengl(monkeypatch):
    monkeypatch.setattr(scene, "_probe", {})
    assert scene.select_renderer("auto") == "soft"
    assert scene._probe == {}  # no pyrender import or EGL context for the default


def test_pyrender_probe_is_cached():
    try:
        first = scene.select_renderer("pyrender")
    except UnavailableError:
        first = "unavailable"
    probe = dict(scene._probe)
    assert "ok" in probe
    try:
        again = scene.select_renderer("pyrender")
    except UnavailableError:
        again = "unavailable"
    assert again == first and scene._probe.get("ok") == probe.get("ok")  # probed once, not again


def test_unknown_renderer_is_an_input_error_with_suggestion():
    with pytest.raises(InputError) as err:
        scene.select_renderer("pyrendr")
    assert "pyrender" in str(err.value) and "\n" not in str(err.value)


def test_explicit_pyrender_without_gl_says_use_soft(monkeypatch):
    monkeypatch.setattr(scene, "_probe", {"ok": False, "reason": "EGLError: no display"})
    with pytest.raises(UnavailableError) as err:
        scene.select_renderer("pyrender")
    assert "\n" not in str(err.value) and "EGLError" in str(err.value)
    assert "--renderer soft" in err.value.hint


@pytest.mark.parametrize("view", list(scene.VIEWS))
def test_view_rotations_are_proper(view):
    r = scene.view_rotation(view)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_front_view_puts_body_left_on_image_right_and_up_on_top():
    framing = scene.frame_points(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]), "front", 100)
    (u0, v0), (u_left, _), (_, v_up) = framing.project(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]))
    assert u_left > u0 and v_up < v0


def test_unknown_view_is_an_input_error():
    with pytest.raises(InputError, match="did you mean 'front'"):
        scene.view_rotation("frnt")


@pytest.mark.parametrize("view", ["front", "left", "top", "three_quarter"])
@pytest.mark.parametrize("size", [128, (200, 100)])
def test_framing_fits_points_tightly_inside_the_margin(view, size):
    pts = np.random.default_rng(0).normal(size=(500, 3)) * [0.3, 0.9, 0.2]
    framing = scene.frame_points(pts, view, size, margin=0.1)
    w, h = scene.image_size(size)
    uv = framing.project(pts)
    rel = np.abs(uv - [(w - 1) / 2, (h - 1) / 2]) / [w / 2, h / 2]
    assert rel.max() <= 0.8 + 1e-9  # inside the margin
    assert rel.max() >= 0.8 - 1e-6  # and touching it: no wasted space
    assert (framing.to_camera(pts)[:, 2] > 0).all()


def test_vertex_normals_of_a_sphere_point_outward(sphere):
    v, f = sphere
    n = scene.vertex_normals(v, f)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
    assert (np.einsum("vd,vd->v", n, v / np.linalg.norm(v, axis=1, keepdims=True)) > 0.99).all()


def test_shading_is_brighter_towards_the_key_light():
    toward = np.asarray(shading.LIGHTS[0][0]) / np.linalg.norm(shading.LIGHTS[0][0])  # towards the key light
    lit = shading.shade(np.stack([toward, -toward]), np.full((2, 3), 0.7))
    assert lit.dtype == np.uint8 and (lit[0] > lit[1]).all()


def test_without_any_gl_library_auto_falls_back_and_pyrender_explains():
    import os
    import subprocess
    import sys

    code = (
        "from dposer_cli.render import scene\n"
        "print(scene.select_renderer('auto'))\n"
        "try:\n    scene.select_renderer('pyrender')\n"
        "except Exception as e:\n    print(type(e).__name__, '|', e, '|', e.hint)\n"
    )
    # a platform whose library is absent, so pyrender's import fails the way it does on a bare machine
    env = {
        **os.environ,
        "PYOPENGL_PLATFORM": "no-such-platform",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True, timeout=60
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "soft"
    assert (
        lines[1].startswith("UnavailableError | renderer pyrender is unavailable")
        and "--renderer soft" in lines[1]
    )
