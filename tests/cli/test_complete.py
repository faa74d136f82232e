"""`dposer complete` end to end through `main()`: files, JSON summary, one-line errors and exit codes."""

import json

import numpy as np
import pytest

from dposer_cli.core.parts import Part
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run


@pytest.fixture
def ckpt(tmp_path):
    return str(write_tiny_prior(tmp_path / "p.pt", Part.body))


@pytest.fixture
def poses(tmp_path):
    data = np.random.default_rng(0).normal(0, 0.2, (4, 63)).astype(np.float32)
    np.savez(tmp_path / "in.npz", pose_body=data)
    return tmp_path / "in.npz", data


def test_json_names_files_that_load_with_hypotheses_axis(tmp_path, capsys, ckpt, poses):
    src, _data = poses
    code, out, err = run(
        capsys,
        "complete",
        str(src),
        "--mask",
        "legs,left_arm",
        "--hypo",
        "3",
        "--steps",
        "6",
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--json",
        "--render",
        "--renderer",
        "soft",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "complete" and summary["hypo"] == 3 and summary["nfe"] == 6
    assert {"mpjpe_min_mm", "mpjpe_mean_mm", "apd_cm"} <= set(summary["metrics"])
    assert summary["metrics"]["mpjpe_min_mm"] <= summary["metrics"]["mpjpe_mean_mm"]
    done = np.load(summary["outputs"]["completed"])
    assert done["pose_body"].shape == (4, 3, 63) and str(done["part"]) == "body"  # the input's key
    assert summary["outputs"]["grid"].endswith("completed.png")
    from PIL import Image

    assert Image.open(summary["outputs"]["grid"]).size[0] > 0


def test_one_hypothesis_keeps_the_input_shape_and_nan_marks_missing(tmp_path, capsys, ckpt):
    data = np.random.default_rng(1).normal(0, 0.2, (3, 63)).astype(np.float32)
    data[0, :6] = np.nan
    data[2, 30:33] = np.nan
    np.savez(tmp_path / "nan.npz", body_pose=data)
    code, out, err = run(
        capsys,
        "complete",
        str(tmp_path / "nan.npz"),
        "--steps",
        "4",
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    done = np.load(summary["outputs"]["completed"])["body_pose"]
    assert done.shape == (3, 63) and np.isfinite(done).all()
    known = ~np.isnan(data)
    np.testing.assert_array_equal(done[known], data[known])
    assert summary["mask_source"] == "nan" and "mpjpe_min_mm" not in summary["metrics"]


def test_mode_scoresde_and_mask_joints(tmp_path, capsys, ckpt, poses):
    src, _data = poses
    code, out, err = run(
        capsys,
        "complete",
        str(src),
        "--mask-joints",
        "0,3",
        "--mode",
        "scoresde",
        "--steps",
        "5",
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["nfe"] == 5 and summary["mask_joints"] == [0, 3]
    assert summary["metric_joints"] == ["left_hip", "left_knee"]


@pytest.mark.parametrize(
    "args,exit_code,pattern",
    [
        (["--mask", "leftleg"], 2, "unknown mask 'leftleg' for --part body (did you mean 'left_leg'?)"),
        (["--mask-joints", ",".join(str(i) for i in range(21))], 1, "the mask covers all 63 dims"),
        (["--mask-joints", "0,x"], 2, "not a joint index"),
        (["--mask", "legs", "--mode", "ddpm"], 2, "unknown --mode 'ddpm'"),
        (["--mask", "legs", "--hypo", "0"], 1, "--hypo must be at least 1"),
        ([], 1, "nothing to complete"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path, capsys, ckpt, poses, args, exit_code, pattern):
    code, _out, err = run(
        capsys,
        "complete",
        str(poses[0]),
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        *args,
    )
    assert code == exit_code
    assert pattern in err and "Traceback" not in err
    if exit_code == 1:
        assert err.count("error:") == 1 and err.splitlines()[0].startswith("error:")


def test_nan_outside_mask_names_row_and_key(tmp_path, capsys, ckpt):
    data = np.zeros((3, 63), np.float32)
    data[1, 40] = np.nan  # right_elbow (joint 13), not a leg
    np.savez(tmp_path / "x.npz", pose_body=data)
    code, out, err = run(
        capsys,
        "complete",
        str(tmp_path / "x.npz"),
        "--mask",
        "legs",
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert code == 1 and "row 1, pose_body[40] is NaN but outside the mask" in err
    assert json.loads(out)["status"] == "error"


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: np.savez(p, body_pose=np.zeros((3, 60), np.float32)), "60"),
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"not an npz"), "not a readable .npz"),
    ],
)
def test_bad_input_files(tmp_path, capsys, ckpt, make, pattern):
    path = tmp_path / "bad.npz"
    make(path)
    code, _, err = run(
        capsys, "complete", str(path), "--mask", "legs", "--checkpoint", ckpt, "--out", str(tmp_path / "o")
    )
    assert code == 1 and pattern in err and err.count("error:") == 1 and "Traceback" not in err
