"""Input checks inside the services (issue #14): sizes, memory, `--init` arrays and IK targets are refused with
exit 1 and one `error:` line before any work, and nothing is written. Inputs are read before the body model and
the prior, so a bad file fails fast (a body-model loader that must not run proves the order)."""

import json
import re

import numpy as np
import pytest

from dposer_cli.core import validate
from dposer_cli.core.parts import Part
from tests._fixtures.priors import write_tiny_prior
from tests.cli._run import run


def assert_refused(code: int, err: str, pattern: str, out_dir) -> None:
    """Exit 1, exactly one error line matching `pattern`, no traceback, no outputs."""
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.iterdir())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    np.savez(root / "seq.npz", pose_body=rng.normal(0, 0.1, (10, 63)).astype(np.float32))
    np.savez(root / "in.npz", pose_body=rng.normal(0, 0.2, (4, 63)).astype(np.float32))
    joints_m = rng.uniform(-0.08, 0.08, (2, 21, 3)) + np.array([0.0, 0.0, 0.5])
    np.savez(root / "targets_mm.npz", joints=(1000 * joints_m).astype(np.float32))  # millimetres, not metres
    np.savez(root / "targets.npz", joints=joints_m.astype(np.float32))
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (64, 48), (128, 128, 128)).save(root / f"{name}.png")
        kp = np.concatenate([rng.uniform(10, 40, (25, 2)), np.ones((25, 1))], 1)
        (root / f"{name}.json").write_text(
            json.dumps({"people": [{"pose_keypoints_2d": kp.reshape(-1).tolist()}]})
        )
    write_tiny_prior(root / "body.pt", Part.body)
    write_tiny_prior(root / "hand.pt", Part.hand)
    return root


@pytest.fixture(autouse=True)
def _no_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DPOSER_BODY_MODELS", raising=False)


def no_body_model(*args, **kwargs):
    raise AssertionError("the body model was loaded before the inputs were checked")


# ---------------------------------------------------------------------------------------------- denoise-motion
def test_denoise_motion_refuses_more_frames_than_supported(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setattr(validate, "MAX_FRAMES", 5)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "denoise-motion",
        assets / "seq.npz",
        "--checkpoint",
        assets / "body.pt",
        "--out",
        out,
        "--no-render",
        "--device",
        "cpu",
    )
    assert_refused(code, err, r"seq\.npz has 10 frames: 10 items; at most 5", out)


def test_denoise_motion_refuses_a_motion_that_does_not_fit_in_memory(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setattr(validate, "available_memory", lambda: 4096)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "denoise-motion",
        assets / "seq.npz",
        "--checkpoint",
        assets / "body.pt",
        "--out",
        out,
        "--no-render",
        "--device",
        "cpu",
    )
    assert_refused(
        code, err, r"seq\.npz: 10 frames would need about .* of memory; about 4\.0 KiB is available", out
    )


# ---------------------------------------------------------------------------------------------- fit-image
def fit_args(assets, out, *extra):
    return (
        "fit-image",
        assets / "a.png",
        "--keypoints",
        assets / "a.json",
        "--out",
        out,
        "--steps",
        "1",
        "--prior",
        "none",
        "--no-overlay",
        "--device",
        "cpu",
        *extra,
    )


def test_fit_image_refuses_more_images_than_supported(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setattr(validate, "MAX_FILES", 1)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "fit-image",
        assets / "a.png",
        assets / "b.png",
        "--keypoints",
        assets / "a.json",
        "--keypoints",
        assets / "b.json",
        "--out",
        out,
        "--prior",
        "none",
        "--device",
        "cpu",
    )
    assert_refused(code, err, r"images: 2 items; at most 1 are supported", out)


@pytest.mark.parametrize(
    "key,width,pattern",
    [
        ("body_pose", 60, r"'body_pose' has 60 values per person; the fit takes 63"),
        ("global_orient", 4, r"'global_orient' has 4 values per person; the fit takes 3"),
        ("transl", 2, r"'transl' has 2 values per person; the fit takes 3"),
    ],
    ids=["body_pose", "global_orient", "transl"],
)
def test_fit_image_refuses_init_arrays_of_the_wrong_width_before_the_body_model(
    tmp_path, capsys, assets, monkeypatch, key, width, pattern
):
    monkeypatch.setattr("dposer_cli.services.fit_image.load_body", no_body_model)
    np.savez(tmp_path / "init.npz", **{key: np.zeros((1, width), np.float32)})
    out = tmp_path / "o"
    code, _, err = run(capsys, *fit_args(assets, out, "--init", tmp_path / "init.npz"))
    assert_refused(code, err, r"--init file .*init\.npz: " + pattern, out)


def test_fit_image_refuses_init_betas_of_another_width_than_the_body_model(tmp_path, capsys, assets):
    np.savez(tmp_path / "init.npz", betas=np.zeros((1, 16), np.float32))
    out = tmp_path / "o"
    code, _, err = run(capsys, *fit_args(assets, out, "--init", tmp_path / "init.npz"))
    assert_refused(code, err, r"'betas' has 16 values per person; the fit takes 10", out)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_fit_image_refuses_non_finite_init_values_before_the_body_model(
    tmp_path, capsys, assets, monkeypatch, bad
):
    monkeypatch.setattr("dposer_cli.services.fit_image.load_body", no_body_model)
    pose = np.zeros((1, 63), np.float32)
    pose[0, 5] = bad
    np.savez(tmp_path / "init.npz", body_pose=pose)
    out = tmp_path / "o"
    code, _, err = run(capsys, *fit_args(assets, out, "--init", tmp_path / "init.npz"))
    assert_refused(code, err, r"--init file .*init\.npz: 'body_pose' holds NaN or infinite values", out)


def test_fit_image_reads_the_keypoints_before_the_body_model(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setattr("dposer_cli.services.fit_image.load_body", no_body_model)
    (tmp_path / "bad.json").write_text("{not json")
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "fit-image",
        assets / "a.png",
        "--keypoints",
        tmp_path / "bad.json",
        "--out",
        out,
        "--prior",
        "none",
        "--device",
        "cpu",
    )
    assert_refused(code, err, r"bad\.json", out)


def test_fit_task_refuses_init_of_the_wrong_width():
    """The Python API (`tasks.fit.fit`) pads nothing either."""
    import torch

    from dposer_cli.bodies.mannequin import MannequinBody
    from dposer_cli.core.errors import InputError
    from dposer_cli.tasks.fit import FitInput, fit

    inputs = FitInput.for_image(torch.rand(1, 25, 3) * 40, image_size=(48, 64))
    with pytest.raises(InputError, match=r"init 'body_pose' has shape \(1, 21\); the fit takes \(B, 63\)"):
        fit(MannequinBody(), None, inputs, steps=1, init={"body_pose": torch.zeros(1, 21)})


# ---------------------------------------------------------------------------------------------- complete
def test_complete_refuses_hypotheses_that_do_not_fit_in_memory(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setattr(validate, "available_memory", lambda: 4096)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "complete",
        assets / "in.npz",
        "--mask",
        "legs",
        "--hypo",
        "3",
        "--checkpoint",
        assets / "body.pt",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert_refused(
        code, err, r"4×3 hypotheses would need about .* of memory; about 4\.0 KiB is available", out
    )


# ---------------------------------------------------------------------------------------------- generate
def test_generate_refuses_a_process_video_trajectory_that_does_not_fit_in_memory(
    tmp_path, capsys, assets, monkeypatch
):
    monkeypatch.setattr(validate, "available_memory", lambda: 16384)  # the poses (1 × 63 floats) fit
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "generate",
        "-n",
        "1",
        "--process-video",
        "--checkpoint",
        assets / "body.pt",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert_refused(code, err, r"the sampling trajectory \(1 samples × \d+ frames\) would need about", out)


# ---------------------------------------------------------------------------------------------- ik
def test_ik_refuses_targets_far_beyond_metres_before_the_body_model(tmp_path, capsys, assets, monkeypatch):
    monkeypatch.setattr("dposer_cli.services.ik.load_body", no_body_model)
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "ik",
        "--part",
        "hand",
        "--targets",
        assets / "targets_mm.npz",
        "--checkpoint",
        assets / "hand.pt",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert_refused(
        code,
        err,
        r"targets_mm\.npz: a target joint lies [\d.]+ m from the origin; targets are in "
        r"metres \(at most 100 m\)",
        out,
    )


def test_ik_reads_the_targets_before_the_face_model(tmp_path, capsys, assets):
    """A bad targets file is named even when FLAME is missing too (exit 1, not the missing model's 3)."""
    out = tmp_path / "o"
    code, _, err = run(
        capsys, "ik", "--part", "face", "--targets", tmp_path / "missing.npz", "--out", out, "--device", "cpu"
    )
    assert_refused(code, err, r"missing\.npz", out)


def test_ik_accepts_targets_in_metres(tmp_path, capsys, assets):
    out = tmp_path / "o"
    code, _, err = run(
        capsys,
        "ik",
        "--part",
        "hand",
        "--targets",
        assets / "targets.npz",
        "--checkpoint",
        assets / "hand.pt",
        "--steps",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert (out / "ik.npz").is_file()
