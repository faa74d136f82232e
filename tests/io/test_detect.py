"""`io.detect`: MediaPipe detections in the layout `read_keypoints` produces, and COCO-WholeBody JSON that reads
back identically. The MediaPipe tests skip (with the reason) when the `detect` extra is not installed; the
conversion, round-trip and missing-extra tests always run."""

import builtins
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dposer_cli.core.errors import InputError, UnavailableError
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.io import detect
from dposer_cli.io.detect import (
    DETECTOR,
    FACE68_FROM_MESH,
    face68_from_mesh,
    landmarks_to_coco_wholebody,
    openpose_to_coco_wholebody,
    write_coco_wholebody,
)
from dposer_cli.io.keypoints import (
    BODY25,
    FACE68,
    LHAND,
    RHAND,
    Keypoints2D,
    coco_wholebody_to_openpose,
    read_keypoints,
)
from dposer_cli.io.media import read_image

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mediapipe = pytest.mark.skipif(
    not HAS_MEDIAPIPE, reason='MediaPipe is not installed (the optional extra: pip install "dposer[detect]")'
)
PHOTOS = ("01_img", "image_00077")


def _random_coco133(rng: np.random.Generator, persons: int = 2) -> np.ndarray:
    kp = np.concatenate(
        [rng.uniform(0, 1600, (persons, 133, 2)), rng.uniform(0, 1, (persons, 133, 1))], axis=-1
    )
    kp[:, 18, 2] = 0.0  # an undetected point
    kp[:, 18, :2] = 0.0
    return kp.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- conversion
def test_openpose_to_coco_wholebody_inverts_the_reader_conversion():
    coco = _random_coco133(np.random.default_rng(0))
    np.testing.assert_array_equal(openpose_to_coco_wholebody(coco_wholebody_to_openpose(coco)), coco)


def test_landmarks_map_to_the_documented_coco_joints():
    rng = np.random.default_rng(1)
    pose = np.concatenate([rng.uniform(0, 1000, (33, 2)), np.full((33, 1), 0.9)], axis=1)
    pose[15, 2], pose[16, 2], pose[0, 2] = 0.7, 0.6, 0.8  # wrists, nose
    left, right, face = (
        rng.uniform(0, 1000, (21, 2)),
        rng.uniform(0, 1000, (21, 2)),
        rng.uniform(0, 1000, (478, 2)),
    )
    coco = landmarks_to_coco_wholebody(pose, left, right, face)
    assert coco.dtype == np.float32 and coco.shape == (133, 3)
    np.testing.assert_allclose(coco[5:17, :2], pose[np.r_[11:17, 23:29], :2], rtol=1e-6)  # shoulders … ankles
    np.testing.assert_allclose(
        coco[[17, 19, 20, 22], :2], pose[[31, 29, 32, 30], :2], rtol=1e-6
    )  # toes, heels
    np.testing.assert_allclose(coco[[1, 2, 3, 4], :2], face[[473, 468, 356, 127]], rtol=1e-6)  # eyes, ears
    assert coco[[18, 21], 2].tolist() == [0, 0]  # small toes: no MediaPipe counterpart
    np.testing.assert_allclose(coco[91:112, :2], left, rtol=1e-6)
    np.testing.assert_allclose(coco[112:133, :2], right, rtol=1e-6)
    np.testing.assert_allclose(coco[91:112, 2], 0.7)  # hands: their wrist's visibility
    np.testing.assert_allclose(coco[112:133, 2], 0.6)
    np.testing.assert_allclose(coco[23:91, 2], 0.8)  # face points: the nose's visibility
    np.testing.assert_allclose(coco[23 + 17 : 91, :2], face[list(FACE68_FROM_MESH)], rtol=1e-6)
    # without hands and face: pose eyes/ears, confidence 0 for everything not found
    coco = landmarks_to_coco_wholebody(pose)
    np.testing.assert_allclose(coco[[1, 2, 3, 4], :2], pose[[2, 5, 7, 8], :2], rtol=1e-6)
    assert not coco[23:, 2].any()


def test_face68_jaw_is_the_face_oval_resampled_evenly():
    mesh = np.zeros((468, 2))
    contour = list(detect._JAW_CONTOUR)
    mesh[contour, 0] = np.linspace(0, 220, len(contour))
    face = face68_from_mesh(mesh)
    np.testing.assert_allclose(face[:17, 0], np.linspace(0, 220, 17), atol=1e-9)
    assert face.shape == (68, 2)


# ---------------------------------------------------------------------------------------------------- JSON
def test_coco_wholebody_json_reads_back_identically(tmp_path):
    coco = _random_coco133(np.random.default_rng(2))
    boxes = np.array([[10.5, 20.25, 400.125, 900.0], [3.0, 4.0, 5.0, 6.0]], np.float32)
    kp = Keypoints2D(coco_wholebody_to_openpose(coco), "openpose135", DETECTOR, boxes, Path("photo.jpg"))
    path = write_coco_wholebody(tmp_path / "photo.json", kp, image_size=(1200, 1600))
    back = read_keypoints(path, part="wholebody")
    assert back.layout == "openpose135" and back.source_format == "coco-wholebody"
    np.testing.assert_array_equal(back.keypoints, kp.keypoints)
    np.testing.assert_array_equal(back.bboxes, kp.bboxes)
    doc = json.loads(path.read_text())
    assert doc["images"] == [{"id": 0, "file_name": "photo.jpg", "height": 1200, "width": 1600}]
    ann = doc["annotations"][0]
    assert [
        len(ann[k]) for k in ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")
    ] == [51, 18, 204, 63, 63]
    # the body part reads the same file
    np.testing.assert_array_equal(read_keypoints(path).keypoints[:, BODY25], kp.keypoints[:, BODY25])


def test_coco_wholebody_writer_refuses_hand_keypoints(tmp_path):
    kp = Keypoints2D(np.ones((1, 21, 3), np.float32), "hand21", "mmpose-hand", None, Path("h.json"))
    with pytest.raises(InputError, match="openpose135"):
        write_coco_wholebody(tmp_path / "h.json", kp)


# ---------------------------------------------------------------------------------------------------- no extra
def test_missing_mediapipe_is_unavailable_with_the_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name.split(".")[0] == "mediapipe":
            raise ModuleNotFoundError("No module named 'mediapipe'", name="mediapipe")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    with pytest.raises(UnavailableError) as info:
        detect.detect_keypoints(np.zeros((8, 8, 3), np.uint8))
    assert info.value.exit_code == 5
    assert "MediaPipe" in info.value.message and "\n" not in info.value.message
    assert info.value.hint == 'pip install "dposer[detect]", or pass --keypoints FILE.json'


# ---------------------------------------------------------------------------------------------------- MediaPipe
@pytest.fixture(scope="module")
def detections(shared_data_module) -> dict[str, tuple[Keypoints2D, Keypoints2D, tuple[int, int]]]:
    body = shared_data_module / "official" / "examples" / "body"
    out = {}
    for name in PHOTOS:
        image = read_image(body / "images" / f"{name}.jpg")
        found = detect.detect_keypoints(image, path=body / "images" / f"{name}.jpg")
        vitpose = read_keypoints(body / "predictions" / f"{name}.json", part="wholebody")
        out[name] = (found, vitpose, image.shape[:2])
    return out


@pytest.fixture(scope="module")
def shared_data_module() -> Path:
    shared = shared_data_dir()
    if not shared.is_dir():
        pytest.skip("../shared/data not present")
    return shared


@needs_mediapipe
@pytest.mark.parametrize("name", PHOTOS)
def test_detection_on_the_official_photos_is_close_to_vitpose(detections, name):
    found, vitpose, (height, width) = detections[name]
    assert found.keypoints.shape == vitpose.keypoints.shape == (1, 135, 3)
    assert found.layout == vitpose.layout == "openpose135" and found.source_format == DETECTOR
    assert found.keypoints.dtype == np.float32 and found.bboxes.shape == (1, 4)
    kp, ref = found.keypoints[0], vitpose.keypoints[0]
    conf = kp[:, 2]
    assert ((conf >= 0) & (conf <= 1)).all()
    body = np.r_[0:19, 19, 21, 22, 24]  # body 25 without the small toes (not detected)
    assert (conf[body] > 0).all(), "the whole body is found on both photos"
    assert (conf[body] > 0.5).mean() > 0.8  # occluded joints (a hidden arm) get a low confidence
    assert conf[[20, 23]].tolist() == [0, 0]  # small toes
    inside = (kp[:, 2] > 0) & (kp[:, 0] >= 0) & (kp[:, 0] < width) & (kp[:, 1] >= 0) & (kp[:, 1] < height)
    assert inside[body].all()
    dist = np.linalg.norm(kp[:, :2] - ref[:, :2], axis=1)
    both = (kp[:, 2] > 0) & (ref[:, 2] > 0)
    assert np.median(dist[BODY25][both[BODY25]]) < 30  # pixels, on 1600×1200 / 1080×1920 photos
    for part in (LHAND, RHAND, FACE68):  # hands and face: close to ViTPose wherever MediaPipe finds them
        if (kp[part, 2] > 0).any():
            assert np.median(dist[part][both[part]]) < 30


@needs_mediapipe
def test_detections_feed_the_same_reader_as_files(detections, tmp_path):
    found, _, size = detections["01_img"]
    assert (found.keypoints[0, LHAND, 2] > 0).all() and (found.keypoints[0, FACE68, 2] > 0).all()
    path = write_coco_wholebody(tmp_path / "01_img.json", found, image_size=size)
    back = read_keypoints(path, part="wholebody")
    np.testing.assert_array_equal(back.keypoints, found.keypoints)
    np.testing.assert_array_equal(back.bboxes, found.bboxes)


@needs_mediapipe
def test_detection_without_a_person_is_an_input_error_and_mediapipe_logs_stay_off_stderr(capfd):
    with pytest.raises(InputError, match="grey.png: no person detected"):
        detect.detect_keypoints(np.full((240, 320, 3), 127, np.uint8), path=Path("grey.png"))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # MediaPipe's C++ logs (glog, TFLite) go to fd 2 unless silenced


@needs_mediapipe
def test_one_detector_for_many_images_equals_a_graph_per_image(detections, shared_data_module):
    body = shared_data_module / "official" / "examples" / "body"
    images = {name: read_image(body / "images" / f"{name}.jpg") for name in PHOTOS}
    with detect.Detector() as detector:  # static-image mode: no tracking from one image to the next
        again = [detector(images[name], path=Path(name)) for name in (*PHOTOS, *reversed(PHOTOS))]
    for found, name in zip(again, (*PHOTOS, *reversed(PHOTOS)), strict=True):
        np.testing.assert_allclose(found.keypoints, detections[name][0].keypoints, atol=1e-3)
    with pytest.raises(RuntimeError, match="outside"):
        detector(images[PHOTOS[0]])


def test_native_writes_are_silenced_while_python_stderr_still_shows(capfd):
    """The graph writes to fd 2 from its own threads (TFLite's "Created ... delegate"); while a detector is open
    those writes go nowhere, but dposer's own log lines (Python's sys.stderr) still show."""
    import os
    import sys

    from dposer_cli.io import detect

    with detect._native_stderr_silenced():
        os.write(2, b"native noise\n")
        print("our log line", file=sys.stderr)
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "native noise" not in err and "our log line" in err and "after" in err
