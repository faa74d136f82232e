"""`dposer denoise-motion` end to end through `main()`: files, JSON summary, one-line errors and exit codes."""

import json

import numpy as np
import pytest

from dposer_cli.core.parts import Part
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run


@pytest.fixture
def ckpt(tmp_path):
    return str(write_tiny_prior(tmp_path / "p.pt", Part.body))


def _seq(tmp_path, frames=6, name="seq.npz"):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / name, pose_body=rng.normal(0, 0.1, (frames, 63)), root_orient=np.zeros((frames, 3)))
    return str(tmp_path / name)


def test_json_names_npz_and_video_that_load(tmp_path, capsys, ckpt):
    code, out, err = run(
        capsys,
        "denoise-motion",
        _seq(tmp_path),
        "--noise-std",
        "0.02",
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--json",
        "--renderer",
        "soft",
        "--temporal",
        "joints",
    )
    assert code == 0, err
    summary = json.loads(out)
    m = summary["metrics"]
    assert summary["command"] == "denoise-motion" and summary["frames"] == 6 and summary["nfe"] == 120
    assert m["mpjpe_input_mm"] > 0 and m["mpjpe_mm"] > 0
    data = np.load(summary["outputs"]["denoised"])
    assert data["body_pose"].shape == (6, 63) and data["joints"].shape == (6, 22, 3)
    assert data["global_orient"].shape == (6, 3)
    import imageio.v3 as iio

    frames = iio.imread(summary["outputs"]["comparison"])
    assert frames.shape[0] == 6 and frames.shape[2] > frames.shape[1]  # two panes side by side


def test_no_render_and_partial_visibility(tmp_path, capsys, ckpt):
    code, out, err = run(
        capsys,
        "denoise-motion",
        _seq(tmp_path),
        "--visible-part",
        "arms",
        "--no-render",
        "--noise-std",
        "0",
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--json",
        "--temporal",
        "joints",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert "comparison" not in summary["outputs"]
    assert {"mpjpe_visible_mm", "mpjpe_occluded_mm"} <= set(summary["metrics"])
    assert "left_knee" in summary["occluded_joints"] and "left_elbow" not in summary["occluded_joints"]


@pytest.mark.parametrize(
    "args,exit_code,pattern",
    [
        (["--occluded-part", "leggs"], 2, "unknown mask 'leggs' for --part body (did you mean 'legs'?)"),
        (["--occluded-part", "legs", "--visible-part", "arms"], 1, "not both"),
        (["--noise-std", "-1"], 1, "--noise-std must be a non-negative"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path, capsys, ckpt, args, exit_code, pattern):
    code, _, err = run(
        capsys,
        "denoise-motion",
        _seq(tmp_path),
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--no-render",
        *args,
    )
    assert code == exit_code and pattern in err and "Traceback" not in err
    if exit_code == 1:
        assert err.count("error:") == 1
    else:  # a usage error: Click's own "Error: Invalid value ..." block
        assert "Invalid value" in err


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: np.savez(p, pose_body=np.zeros((1, 63))), "1 frame"),
        (lambda p: np.savez(p, pose_body=np.zeros((5, 60))), "(T, 63)"),
        (lambda p: None, "not found"),
        (lambda p: np.savez(p, something=np.zeros(3)), "no motion found"),
    ],
)
def test_bad_sequences(tmp_path, capsys, ckpt, make, pattern):
    path = tmp_path / "bad.npz"
    make(path)
    code, out, err = run(
        capsys, "denoise-motion", str(path), "--checkpoint", ckpt, "--out", str(tmp_path / "o"), "--json"
    )
    assert code == 1 and pattern in err and err.count("error:") == 1 and "Traceback" not in err
    assert json.loads(out)["status"] == "error"
