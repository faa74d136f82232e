"""Keypoint JSON readers: shared ViTPose/MMPose examples, synthetic OpenPose/COCO files, one-line errors."""

import json

import numpy as np
import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.io.keypoints import (
    HAND21_EDGES,
    KEYPOINT_FORMATS,
    OPENPOSE25_EDGES,
    OPENPOSE25_NAMES,
    read_keypoints,
)

RNG = np.random.default_rng(2)

# Independent, name-based reference for the body: COCO-17 names → OpenPose-25 names
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")  # fmt: skip
FEET = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")


def _expected_openpose(coco133: np.ndarray) -> np.ndarray:
    """OpenPose-135 built by joint names (not by the module's index table)."""
    out = np.zeros((135, 3))
    source = dict(zip(COCO17 + FEET, coco133[:23], strict=True))
    for i, name in enumerate(OPENPOSE25_NAMES):
        if name in source:
            out[i] = source[name]
    for i, (a, b) in {1: ("left_shoulder", "right_shoulder"), 8: ("left_hip", "right_hip")}.items():
        out[i, :2] = (source[a][:2] + source[b][:2]) / 2
        out[i, 2] = source[a][2] * source[b][2]
    out[25:46], out[46:67], out[67:135] = coco133[91:112], coco133[112:133], coco133[23:91]
    out[:, 2] = np.clip(out[:, 2], 0, 1)  # ViTPose scores can exceed 1 slightly; the reader clips
    return out


def _write(tmp_path, data, name="kp.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _person133(conf=None):
    kp = np.concatenate([RNG.uniform(0, 500, (133, 2)), RNG.uniform(0.1, 1, (133, 1))], 1)
    if conf is not None:
        kp[:, 2] = conf
    return kp


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------------- shared
def test_shared_vitpose_examples_convert_by_joint_name(shared_data):
    files = sorted((shared_data / "official/examples/body/predictions").glob("*.json"))
    assert files
    for path in files:
        raw = json.loads(path.read_text())
        kp = read_keypoints(path)
        assert (
            kp.layout == "openpose135" and kp.source_format == "vitpose" and kp.keypoints.shape == (1, 135, 3)
        )
        coco = np.asarray(raw[0]["keypoints"], np.float64)
        np.testing.assert_allclose(kp.keypoints[0], _expected_openpose(coco), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(kp.bboxes[0], raw[0]["bbox"][:4], rtol=1e-6)
        hand = read_keypoints(path, part="hand")
        np.testing.assert_allclose(hand.keypoints[0], _expected_openpose(coco)[46:67], rtol=1e-6, atol=1e-4)


def test_shared_mmpose_hand_examples(shared_data):
    files = sorted((shared_data / "official/examples/hands/predictions").glob("*.json"))
    assert files
    for path in files:
        raw = json.loads(path.read_text())
        for fmt in ("auto", "mmpose-hand"):
            kp = read_keypoints(path, fmt, part="hand")
            assert kp.layout == "hand21" and kp.source_format == "mmpose-hand"
            np.testing.assert_allclose(kp.keypoints[0, :, :2], raw[0]["keypoints"], rtol=1e-6)
            np.testing.assert_allclose(kp.keypoints[0, :, 2], raw[0]["keypoint_scores"], rtol=1e-6)
            np.testing.assert_allclose(kp.bboxes[0], raw[0]["bbox"][0], rtol=1e-6)


def test_format_mismatch_names_file_expected_and_found(shared_data):
    path = shared_data / "official/examples/body/predictions/01_img.json"
    with pytest.raises(InputError) as exc:
        read_keypoints(path, "openpose")
    assert _one_line(exc) == (
        f'{path}: expected OpenPose JSON (key "people"), found a list of 1 person with 133 keypoints '
        "(ViTPose/COCO-WholeBody); use --keypoint-format auto"
    )
    hand = shared_data / "official/examples/hands/predictions/00000014.json"
    with pytest.raises(InputError, match="found a list of 1 person with 21 keypoints"):
        read_keypoints(hand, "vitpose", part="hand")
    with pytest.raises(InputError, match="use --part hand"):
        read_keypoints(hand, "auto", part="body")


# ---------------------------------------------------------------------------------------------------- synthetic
def test_mmpose_wholebody_and_inferencer_nesting_equal_vitpose(tmp_path):
    people = [_person133() for _ in range(3)]
    vit = _write(tmp_path, [{"bbox": [1, 2, 3, 4, 0.9], "keypoints": p.tolist()} for p in people], "v.json")
    mm = [{"keypoints": p[:, :2].tolist(), "keypoint_scores": p[:, 2].tolist(), "bbox": [[1, 2, 3, 4]]}
          for p in people]  # fmt: skip
    a = read_keypoints(vit)
    b = read_keypoints(_write(tmp_path, mm, "m.json"), "coco-wholebody")
    c = read_keypoints(_write(tmp_path, {"predictions": [mm]}, "p.json"))
    assert (a.source_format, b.source_format, c.source_format) == ("vitpose", "mmpose", "mmpose")
    for other in (b, c):
        np.testing.assert_allclose(other.keypoints, a.keypoints)
        np.testing.assert_allclose(other.bboxes, a.bboxes)
    assert a.keypoints.shape == (3, 135, 3)
    for i, p in enumerate(people):
        np.testing.assert_allclose(a.keypoints[i], _expected_openpose(p), rtol=1e-5, atol=1e-3)


def test_openpose_json_body_hands_and_face(tmp_path):
    body, lh, rh, face = (_person133()[:n] for n in (25, 21, 21, 70))
    person = {"person_id": [-1], "pose_keypoints_2d": body.ravel().tolist(),
              "hand_left_keypoints_2d": lh.ravel().tolist(), "hand_right_keypoints_2d": rh.ravel().tolist(),
              "face_keypoints_2d": face.ravel().tolist()}  # fmt: skip
    bare = {"pose_keypoints_2d": body.ravel().tolist(), "hand_left_keypoints_2d": [], "face_keypoints_2d": []}
    path = _write(tmp_path, {"version": 1.3, "people": [person, bare]})
    kp = read_keypoints(path, "openpose", part="wholebody")
    assert kp.source_format == "openpose" and kp.bboxes is None and kp.keypoints.shape == (2, 135, 3)
    want = np.concatenate([body, lh, rh, face[:68]])
    np.testing.assert_allclose(kp.keypoints[0], want, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(kp.keypoints[1, :25], body, rtol=1e-6, atol=1e-4)
    assert (kp.keypoints[1, 25:] == 0).all()
    np.testing.assert_allclose(read_keypoints(path, part="hand").keypoints[0], rh, rtol=1e-6, atol=1e-4)


def test_coco17_gets_pelvis_and_neck_and_zero_feet(tmp_path):
    p = _person133()[:17]
    kp = read_keypoints(_write(tmp_path, [{"keypoints": p.tolist()}]), "coco17")
    want = _expected_openpose(np.concatenate([p, np.zeros((116, 3))]))
    np.testing.assert_allclose(kp.keypoints[0], want, rtol=1e-5, atol=1e-3)
    assert kp.source_format == "coco17" and (kp.keypoints[0, 19:, 2] == 0).all()


def test_coco_annotation_files_use_visibility_and_xywh_boxes(tmp_path):
    p = _person133()
    vis = np.where(RNG.uniform(size=133) < 0.3, 0, 2)
    flat = lambda a, v: np.concatenate([a[:, :2], v[:, None]], 1).ravel().tolist()
    ann = {"keypoints": flat(p[:17], vis[:17]), "foot_kpts": flat(p[17:23], vis[17:23]),
           "face_kpts": flat(p[23:91], vis[23:91]), "lefthand_kpts": flat(p[91:112], vis[91:112]),
           "righthand_kpts": flat(p[112:], vis[112:]), "bbox": [10, 20, 30, 40]}  # fmt: skip
    kp = read_keypoints(_write(tmp_path, {"annotations": [ann]}), "coco-wholebody")
    assert kp.source_format == "coco-wholebody"
    np.testing.assert_allclose(kp.bboxes[0], [10, 20, 40, 60])
    want = _expected_openpose(np.concatenate([p[:, :2], (vis > 0)[:, None]], 1))
    np.testing.assert_allclose(kp.keypoints[0], want, rtol=1e-5, atol=1e-3)
    assert set(np.unique(kp.keypoints[0, :, 2])) <= {0.0, 1.0}
    body_only = dict(ann, foot_kpts=None)
    del body_only["foot_kpts"]
    assert read_keypoints(_write(tmp_path, {"annotations": [body_only]})).source_format == "coco17"


def test_nan_points_get_zero_confidence(tmp_path):
    p = _person133()
    p[0] = np.nan
    path = tmp_path / "n.json"
    path.write_text(json.dumps([{"keypoints": p.tolist()}]))  # json writes NaN, Python reads it back
    kp = read_keypoints(path)
    assert np.isfinite(kp.keypoints).all() and kp.keypoints[0, 0, 2] == 0
    p = _person133()
    p[1, 0] = 1e30  # its square overflows float32: as missing as NaN
    path.write_text(json.dumps([{"keypoints": p.tolist()}]))
    kp = read_keypoints(path)
    assert np.isfinite(kp.keypoints).all() and (kp.keypoints[0, :, 2] == 0).sum() == 1


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("content", "fmt", "needle"),
    [
        ("[]", "auto", "no persons found"),
        ('{"people": []}', "auto", 'no persons found ("people" is empty)'),
        ('[{"keypoints": [[1, 2, 0.5]]', "auto", "not valid JSON (line 1, column 29"),
        (json.dumps([{"keypoints": np.ones((30, 3)).tolist()}]), "auto", "has 30 points; expected 133"),
        (
            json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 54}]}),
            "auto",
            "pose_keypoints_2d has 18 keypoints",
        ),
        (json.dumps([{"keypoints": np.ones((21, 2)).tolist()}]), "auto", '"keypoint_scores" is missing'),
        (json.dumps({"foo": 1}), "auto", "not a recognised keypoints file"),
        (json.dumps({"foo": 1}), "vitpose", "found no keypoint structure"),
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 75}]}), "mmpose-hand", "found OpenPose JSON"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, content, fmt, needle):
    path = tmp_path / "kp.json"
    path.write_text(content)
    with pytest.raises(InputError) as exc:
        read_keypoints(path, fmt, part="hand" if "keypoint_scores" in needle else "body")
    msg = _one_line(exc)
    assert needle in msg and msg.startswith(str(path))


def test_all_zero_confidences_are_rejected(tmp_path):
    path = _write(tmp_path, [{"keypoints": _person133(conf=0.0).tolist()}])
    with pytest.raises(InputError, match="confidence 0"):
        read_keypoints(path)
    p = _person133(conf=0.0)
    p[100, 2] = 0.9  # only a hand point: nothing for a body fit, but fine for whole-body
    path = _write(tmp_path, [{"keypoints": p.tolist()}])
    with pytest.raises(InputError, match="all body keypoints have confidence 0"):
        read_keypoints(path, part="body")
    assert read_keypoints(path, part="wholebody").keypoints.shape == (1, 135, 3)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="keypoints file not found"):
        read_keypoints(tmp_path / "nope.json")
    with pytest.raises(InputError, match="unknown keypoint format"):
        read_keypoints(tmp_path / "nope.json", "alphapose")
    assert "auto" in KEYPOINT_FORMATS


@pytest.mark.parametrize(("edges", "n"), [(OPENPOSE25_EDGES, 25), (HAND21_EDGES, 21)])
def test_skeleton_edges_form_a_tree(edges, n):
    assert len(edges) == n - 1 and len(set(edges)) == n - 1
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in edges:
        assert 0 <= a < n and 0 <= b < n and root(a) != root(b)  # no cycles
        parent[root(a)] = root(b)
    assert len({root(i) for i in range(n)}) == 1  # connected
