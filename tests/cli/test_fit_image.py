"""`dposer fit-image` through `main()`: JSON summary and files, keypoint discovery, one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli._run import run
from tests.services.test_fit_image import reference_poses, synthetic_scene, write_blank_image, write_keypoints


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene(reference_poses()[[7, 70]], seed=3, width=480, height=320)


def _inputs(tmp_path, scene, name="photo", fmt="openpose"):
    img = write_blank_image(tmp_path / f"{name}.png", scene.width, scene.height)
    return img, write_keypoints(tmp_path / f"{name}.json", scene.keypoints, fmt)


def test_json_summary_names_npz_and_overlay_that_exist_and_load(tmp_path, capsys, scene):
    img, kp = _inputs(tmp_path, scene)
    code, out, err = run(
        capsys,
        "fit-image",
        str(img),
        "--keypoints",
        str(kp),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "3",
        "--prior",
        "l2",
        "--renderer",
        "soft",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "fit-image" and summary["status"] == "ok" and summary["persons"] == 2
    assert summary["nfe"] == 0 and summary["seconds"] > 0 and summary["part"] == "body"
    (npz,), (overlay,) = summary["outputs"]["npz"], summary["outputs"]["overlays"]
    data = np.load(npz)
    assert data["body_pose"].shape == (2, 63) and np.isfinite(data["body_pose"]).all()
    with Image.open(overlay) as im:
        assert im.size == (scene.width, scene.height)
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels != 128).any(axis=-1).mean() > 0.02  # meshes and keypoints were drawn on the grey photo
    (entry,) = summary["images"]
    assert entry["npz"] == npz and entry["overlay"] == overlay
    assert entry["reprojection_error_px"] >= 0 and entry["loss"] >= 0 and len(entry["per_person"]) == 2
    assert summary["metrics"]["reprojection_error_px"] == pytest.approx(entry["reprojection_error_px"])


def test_keypoints_are_found_in_predictions_beside_images(tmp_path, capsys, scene):
    (tmp_path / "images").mkdir()
    (tmp_path / "predictions").mkdir()
    img = write_blank_image(tmp_path / "images" / "a.png", scene.width, scene.height)
    write_keypoints(tmp_path / "predictions" / "a.json", scene.keypoints, "vitpose")
    code, out, err = run(
        capsys,
        "fit-image",
        str(img),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "2",
        "--prior",
        "none",
        "--no-overlay",
        "--person",
        "1",
        "--device",
        "cpu",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (
        summary["images"][0]["keypoints"].endswith("predictions/a.json")
        and "overlays" not in summary["outputs"]
    )
    assert np.load(summary["outputs"]["npz"][0])["person_index"].tolist() == [1]


def _bad(tmp_path, scene, case):
    img, kp = _inputs(tmp_path, scene)
    if case == "format":
        return [str(img), "--keypoints", str(kp), "--keypoint-format", "vitpose"], "expected ViTPose"
    if case == "zero-persons":
        kp.write_text("[]")
        return [str(img), "--keypoints", str(kp)], "no persons"
    if case == "zero-confidence":
        zero = scene.keypoints.copy()
        zero[..., 2] = 0
        write_keypoints(kp, zero, "openpose")
        return [str(img), "--keypoints", str(kp)], "confidence 0"
    if case == "missing-image":
        return [str(tmp_path / "nope.png"), "--keypoints", str(kp)], "image not found"
    if case == "unreadable-image":
        img.write_bytes(b"not a picture at all")
        return [str(img), "--keypoints", str(kp)], "cannot read image"
    if case == "count-mismatch":
        img2, _ = _inputs(tmp_path, scene, name="other")
        return [str(img), str(img2), "--keypoints", str(kp)], "2 image(s) but 1 keypoint file(s)"
    if case == "no-keypoints":
        kp.unlink()
        return [str(img)], "no keypoints for"
    if case == "hand-keypoints-for-body":
        write_keypoints(kp, np.ones((1, 21, 3), np.float32), "mmpose-hand")
        return [str(img), "--keypoints", str(kp)], "21 hand keypoints"
    if case == "part-face":
        return [str(img), "--keypoints", str(kp), "--part", "face"], "fits body, hand or wholebody"
    if case == "prior":
        return [str(img), "--keypoints", str(kp), "--prior", "vposer"], "unknown --prior 'vposer'"
    if case == "person":
        return [str(img), "--keypoints", str(kp), "--person", "first"], "--person must be"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case",
    [
        "format",
        "zero-persons",
        "zero-confidence",
        "missing-image",
        "unreadable-image",
        "count-mismatch",
        "no-keypoints",
        "hand-keypoints-for-body",
        "person",
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(tmp_path, capsys, scene, case):
    args, pattern = _bad(tmp_path, scene, case)
    code, out, err = run(
        capsys,
        "fit-image",
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "1",
        "--prior",
        "none",
        "--no-overlay",
        "--device",
        "cpu",
        *args,
    )  # the case's options come last and win
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and pattern in errors[0], err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("case", ["part-face", "prior"])
def test_unknown_choices_are_usage_errors_exit_2(tmp_path, capsys, scene, case):
    args, pattern = _bad(tmp_path, scene, case)
    code, out, err = run(
        capsys,
        "fit-image",
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "1",
        "--prior",
        "none",
        "--no-overlay",
        "--device",
        "cpu",
        *args,
    )  # the case's options come last and win
    assert code == 2, err
    assert "Invalid value" in err and pattern in err.replace("\n", " ")
    assert "Traceback" not in err and out == ""
