"""`dposer ik` end to end through `main()`: files, metrics in the JSON summary, determinism, one-line errors."""

import json

import numpy as np
import pytest

from dposer_cli.core.parts import Part
from dposer_cli.io.poses import read_poses
from tests._fixtures.body_models import write_flame, write_mano
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    np.savez(root / "hand_gt.npz", hand_pose=(0.3 * rng.standard_normal((6, 45))).astype(np.float32))
    write_flame(root / "flame")
    np.savez(
        root / "face_gt.npz",
        jaw_pose=0.1 * rng.standard_normal((4, 3)),
        expression=rng.standard_normal((4, 100)),
        betas=rng.standard_normal((4, 50)),
    )
    return {
        "root": root,
        "hand_prior": write_tiny_prior(root / "hand.pt", Part.hand),
        "face_prior": write_tiny_prior(root / "face.pt", Part.face),
        "shape_prior": write_tiny_prior(root / "shape.pt", Part.face_shape),
    }


def hand_args(assets, tmp_path, *extra):
    return [
        "ik",
        "--part",
        "hand",
        "--targets",
        str(assets["root"] / "hand_gt.npz"),
        "--out",
        str(tmp_path / "o"),
        "--checkpoint",
        str(assets["hand_prior"]),
        "--steps",
        "12",
        "--device",
        "cpu",
        *extra,
    ]


def test_hand_ik_from_ground_truth_writes_parameters_and_reports_table4_metrics(tmp_path, capsys, assets):
    code, out, err = run(capsys, *hand_args(assets, tmp_path, "--type", "sparse", "--json"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "ik" and summary["type"] == "sparse" and summary["nfe"] == 12
    assert summary["joint_order"] == "hand21" and summary["evaluation"] is True
    for key in ("mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_all_mm", "mpvpe_mm", "target_error_mm"):
        assert np.isfinite(summary["metrics"][key]), key
    data = np.load(summary["outputs"]["ik"])
    assert data["hand_pose"].shape == (6, 45) and data["joints"].shape == (6, 21, 3)
    assert data["visible"].dtype == bool and (data["visible"].sum(-1) == 8).all()
    assert data["target_joints"].shape == (6, 21, 3) and data["global_orient"].shape == (6, 3)
    assert read_poses(summary["outputs"]["ik"], Part.hand).poses.shape == (6, 45)  # a regular pose file


def test_joint_targets_with_visibility_need_no_ground_truth(tmp_path, capsys, assets):
    # joint targets from a first (ground-truth) run, with one finger's joints hidden
    code, out, _ = run(capsys, *hand_args(assets, tmp_path, "--type", "full", "--prior", "none", "--json"))
    first = np.load(json.loads(out)["outputs"]["ik"])
    visible = np.ones((6, 21), bool)
    visible[:, 5:9] = False
    np.savez(tmp_path / "joints.npz", joints=first["joints"], visible=visible)
    code, out, err = run(
        capsys,
        "ik",
        "--part",
        "hand",
        "--targets",
        str(tmp_path / "joints.npz"),
        "--out",
        str(tmp_path / "j"),
        "--prior",
        "l2",
        "--steps",
        "30",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary["metrics"]) == {"target_error_mm", "solves_per_second"} and summary["nfe"] == 0
    assert summary["metrics"]["target_error_mm"] < 20
    assert (np.load(summary["outputs"]["ik"])["visible"] == visible).all()


def test_same_seed_same_file_and_mano_from_body_model(tmp_path, capsys, assets):
    files = []
    for i, seed in enumerate([3, 3, 4]):
        code, out, err = run(
            capsys,
            *hand_args(
                assets,
                tmp_path,
                "--type",
                "partial",
                "--seed",
                str(seed),
                "--json",
                "--out",
                str(tmp_path / f"o{i}"),
            ),
        )
        assert code == 0, err
        files.append(np.load(json.loads(out)["outputs"]["ik"])["hand_pose"])
    np.testing.assert_array_equal(files[0], files[1])
    assert not np.allclose(files[0], files[2])
    write_mano(tmp_path / "mano", "right")
    code, out, err = run(
        capsys,
        *hand_args(
            assets,
            tmp_path,
            "--type",
            "noisy",
            "--noise-std",
            "0.005",
            "--json",
            "--body-model",
            str(tmp_path / "mano"),
        ),
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["body_model"] == "mano" and summary["noise_std"] == 0.005
    assert "mpjpe_occluded_mm" not in summary["metrics"] and summary["metrics"]["mpvpe_mm"] > 0


def test_face_ik_with_flame_fixture_and_two_priors(tmp_path, capsys, assets):
    code, out, err = run(
        capsys,
        "ik",
        "--part",
        "face",
        "--targets",
        str(assets["root"] / "face_gt.npz"),
        "--type",
        "half_face",
        "--out",
        str(tmp_path / "f"),
        "--body-model",
        str(assets["root"] / "flame"),
        "--checkpoint",
        str(assets["face_prior"]),
        "--shape-checkpoint",
        str(assets["shape_prior"]),
        "--steps",
        "10",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["nfe"] == 20 and summary["joint_order"] == "flame73" and len(summary["checkpoint"]) == 2
    data = np.load(summary["outputs"]["ik"])
    assert data["expression"].shape == (4, 100) and data["betas"].shape == (4, 100)
    assert data["jaw_pose"].shape == (4, 3) and data["joints"].shape == (4, 73, 3)
    assert read_poses(summary["outputs"]["ik"], Part.face).poses.shape == (4, 103)
    assert {"mpjpe_visible_mm", "mpjpe_occluded_mm", "mpvpe_mm"} <= set(summary["metrics"])


def test_face_without_flame_names_the_searched_places(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DPOSER_BODY_MODELS", raising=False)
    code, _, err = run(
        capsys,
        "ik",
        "--part",
        "face",
        "--targets",
        str(assets["root"] / "face_gt.npz"),
        "--out",
        str(tmp_path / "f"),
        "--device",
        "cpu",
    )
    assert code == 3 and err.count("error:") == 1 and "no FLAME model found" in err
    assert str(tmp_path / "cache") in err and "Traceback" not in err


def _bad_files(root):
    nan = np.zeros((2, 21, 3))
    nan[0, 3, 1] = np.nan
    hidden = np.ones((2, 21), bool)
    hidden[1] = False
    files = {
        "wrong_j": {"joints": np.zeros((2, 73, 3))},
        "nan": {"joints": nan},
        "hidden": {"joints": np.zeros((2, 21, 3)), "visible": hidden},
    }
    for name, arrays in files.items():
        np.savez(root / f"{name}.npz", **arrays)


@pytest.mark.parametrize(
    "target,args,code,pattern",
    [
        ("wrong_j.npz", [], 1, "expected (N, 21, 3) for --part hand (hand21 joint order)"),
        ("nan.npz", [], 1, "NaN or infinite values at sample 0, joint 3"),
        ("hidden.npz", [], 1, "sample 1 has no visible joints"),
        ("missing.npz", [], 1, "not found"),
        ("hidden.npz", ["--type", "left_face"], 2, "--type left_face is not available for --part hand"),
        ("hidden.npz", ["--part", "body"], 2, "supports --part hand or face"),
        ("hidden.npz", ["--noise-std", "0.01"], 1, "--noise-std applies to --type noisy only"),
        ("hidden.npz", ["--prior", "gmm"], 2, "unknown --prior 'gmm'"),
        ("hidden.npz", ["--steps", "0"], 1, "--steps must be at least 1"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, target, args, code, pattern):
    _bad_files(tmp_path)
    got, _, err = run(
        capsys,
        "ik",
        "--targets",
        str(tmp_path / target),
        "--out",
        str(tmp_path / "o"),
        "--prior",
        "none",
        "--device",
        "cpu",
        *args,
    )
    assert got == code, err
    assert pattern in err and "Traceback" not in err
    if code == 1:
        assert err.count("error:") == 1
    else:  # a usage error: Click's own "Error: Invalid value ..." block
        assert "Invalid value" in err


def test_help_documents_the_joint_orders(capsys):
    code, out, _ = run(capsys, "ik", "--help")
    assert code == 0 and "hand21" in out and "flame73" in out and "fingertip" in out


def test_render_draws_targets_against_the_recovered_joints(tmp_path, capsys, assets):
    from PIL import Image

    from dposer_cli.render.draw import HIDDEN_TARGET_COLOR, TARGET_COLOR

    code, out, err = run(
        capsys, *hand_args(assets, tmp_path, "--type", "sparse", "--render", "--renderer", "soft", "--json")
    )
    assert code == 0, err
    summary = json.loads(out)
    with Image.open(summary["outputs"]["picture"]) as im:
        img = np.asarray(im.convert("RGB")).astype(int)
    cell = 256
    assert img.shape[1] == 4 * cell and img.shape[0] > 2 * cell  # 6 solves: 4 + 2 cells, under a legend
    sheet = img[-2 * cell :]
    for k in range(6):
        c = sheet[(k // 4) * cell : (k // 4 + 1) * cell, (k % 4) * cell : (k % 4 + 1) * cell]
        seen = (np.abs(c - TARGET_COLOR).sum(-1) < 40).sum()
        hidden = (np.abs(c - HIDDEN_TARGET_COLOR).sum(-1) < 40).sum()
        assert seen > 50 and hidden > 50, k  # sparse: 8 targets seen, 13 hidden (known: ground truth)
    code, out, _ = run(capsys, *hand_args(assets, tmp_path / "plain", "--json"))
    assert "picture" not in json.loads(out)["outputs"]  # only with --render


def test_help_documents_render(capsys):
    code, out, _ = run(capsys, "ik", "--help")
    assert code == 0 and "--render" in out and "ik.png" in out


def test_render_face_ik_marks_the_hidden_half(tmp_path, capsys, assets):
    from PIL import Image

    from dposer_cli.render.draw import HIDDEN_TARGET_COLOR, TARGET_COLOR

    code, out, err = run(
        capsys,
        "ik",
        "--part",
        "face",
        "--targets",
        str(assets["root"] / "face_gt.npz"),
        "--type",
        "half_face",
        "--out",
        str(tmp_path / "f"),
        "--body-model",
        str(assets["root"] / "flame"),
        "--checkpoint",
        str(assets["face_prior"]),
        "--shape-checkpoint",
        str(assets["shape_prior"]),
        "--steps",
        "4",
        "--device",
        "cpu",
        "--render",
        "--renderer",
        "soft",
        "--json",
    )
    assert code == 0, err
    with Image.open(json.loads(out)["outputs"]["picture"]) as im:
        img = np.asarray(im.convert("RGB")).astype(int)
    assert img.shape[1] == 4 * 256
    assert (np.abs(img - TARGET_COLOR).sum(-1) < 40).sum() > 200
    assert (np.abs(img - HIDDEN_TARGET_COLOR).sum(-1) < 40).sum() > 200
