"""2D keypoint JSON → OpenPose-ordered arrays with confidences (spec §7.6–7.8, formats.md §4.3).

Layouts produced:

- ``openpose135``: OpenPose body-25, left hand 21, right hand 21, face 68 (the official internal layout);
- ``hand21``: one hand in OpenPose hand order (wrist, thumb 1–4, index 1–4, middle 1–4, ring 1–4, pinky 1–4).

Readable files (auto-detected from their structure):

- ViTPose (DPoser-X examples): ``[{"bbox": [x1, y1, x2, y2, s], "keypoints": [[x, y, s] × 133]}]``;
- MMPose ≥ 1.x: instances with ``keypoints`` [[x, y] × K] and ``keypoint_scores`` [K], as a list, or nested as the
  inferencer's ``{"predictions": [[instance, ...]]}`` (first image); K = 133 (COCO-WholeBody), 21 (hand), 17;
- COCO annotations: ``{"annotations": [{"keypoints": [x, y, v] × 17 flat, "foot_kpts", "face_kpts",
  "lefthand_kpts", "righthand_kpts", "bbox": [x, y, w, h]}]}`` (COCO-17 or COCO-WholeBody; v 0/1/2);
- OpenPose ``--write_json``: ``{"people": [{"pose_keypoints_2d": 25×3, "hand_left_keypoints_2d": 21×3,
  "hand_right_keypoints_2d": 21×3, "face_keypoints_2d": 70×3 (first 68 kept)}]}``.

COCO-WholeBody 133 goes through the official ``merge_joint`` (pelvis and neck = mean of hips / shoulders with
the product of their confidences) and ``coco_to_openpose`` reindexing; COCO-17 the same with feet, hands and face
at confidence 0. Confidences are clipped to [0, 1] (COCO visibility 2 → 1); NaN coordinates get confidence 0.
With ``part="hand"`` a whole-body file yields its right hand (the hand prior's convention) as ``hand21``.
The two 133-point names (``vitpose``, ``coco-wholebody``) accept any of the 133-point structures.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError

KEYPOINT_FORMATS = ("auto", "vitpose", "coco-wholebody", "openpose", "mmpose-hand", "coco17")
KEYPOINT_PARTS = ("body", "hand", "wholebody")

OPENPOSE25_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
    "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
    "right_small_toe", "right_heel",
)  # fmt: skip
HAND21_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}{i}" for finger in ("thumb", "index", "middle", "ring", "pinky") for i in range(1, 5)
)
OPENPOSE25_EDGES: list[tuple[int, int]] = [
    (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11), (8, 12), (12, 13),
    (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18), (14, 19), (19, 20), (14, 21), (11, 22), (22, 23),
    (11, 24),
]  # fmt: skip
HAND21_EDGES: list[tuple[int, int]] = [
    (0, 1 + 4 * f) if k == 0 else (4 * f + k, 4 * f + k + 1) for f in range(5) for k in range(4)
]

# OpenPose-135 slices (spec §7.6): body 25, left hand 21, right hand 21, face 68
BODY25 = slice(0, 25)
LHAND = slice(25, 46)
RHAND = slice(46, 67)
FACE68 = slice(67, 135)
# merged-COCO(135) → OpenPose(135): spec §7.6 coco_to_openpose (identity from 19 on)
COCO_TO_OPENPOSE = np.array(
    [0, 18, 6, 8, 10, 5, 7, 9, 17, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3] + list(range(19, 135))
)
_WHOLEBODY_FORMATS = ("vitpose", "coco-wholebody")
_COUNT_NAMES = {133: "ViTPose/COCO-WholeBody", 17: "COCO-17", 21: "MMPose hand"}
_EXPECTED = {
    "vitpose": "ViTPose/COCO-WholeBody JSON (a list of persons with 133 keypoints)",
    "coco-wholebody": "COCO-WholeBody JSON (persons with 133 keypoints)",
    "openpose": 'OpenPose JSON (key "people")',
    "mmpose-hand": "MMPose hand JSON (instances with 21 keypoints and keypoint_scores)",
    "coco17": "COCO-17 JSON (persons with 17 keypoints)",
}


@dataclass
class Keypoints2D:
    """Detected 2D keypoints of P persons (or hands) in one image."""

    keypoints: Float[np.ndarray, "P K 3"]  # x, y in pixels; confidence in [0, 1]
    layout: str  # "openpose135" | "hand21"
    source_format: str  # "vitpose" | "coco-wholebody" | "mmpose" | "mmpose-hand" | "coco17" | "openpose"
    bboxes: Float[np.ndarray, "P 4"] | None  # x1, y1, x2, y2 in pixels
    path: Path

    @property
    def num_persons(self) -> int:
        return len(self.keypoints)


# ---------------------------------------------------------------------------------------------------- conversion
def merge_joint(coco133: Float[np.ndarray, "*batch 133 3"]) -> Float[np.ndarray, "*batch 135 3"]:
    """COCO-WholeBody 133 → merged 135 (official `merge_joint`): body 17, pelvis, neck, feet, hands, face."""
    body, feet, face = coco133[..., :17, :], coco133[..., 17:23, :], coco133[..., 23:91, :]
    lhand, rhand = coco133[..., 91:112, :], coco133[..., 112:133, :]

    def mid(a: int, b: int) -> np.ndarray:  # mean position, product of confidences
        out = (body[..., a, :] + body[..., b, :]) * 0.5
        out[..., 2] = body[..., a, 2] * body[..., b, 2]
        return out[..., None, :]

    pelvis, neck = mid(11, 12), mid(5, 6)  # COCO: 11/12 hips, 5/6 shoulders
    return np.concatenate([body, pelvis, neck, feet, lhand, rhand, face], axis=-2).astype(np.float32)


def coco_wholebody_to_openpose(
    coco133: Float[np.ndarray, "*batch 133 3"],
) -> Float[np.ndarray, "*batch 135 3"]:
    """COCO-WholeBody 133 (x, y, conf) → OpenPose-135 (spec §7.6: merge_joint, then coco_to_openpose)."""
    return merge_joint(coco133)[..., COCO_TO_OPENPOSE, :]


def coco17_to_openpose(coco17: Float[np.ndarray, "*batch 17 3"]) -> Float[np.ndarray, "*batch 135 3"]:
    """COCO-17 body → OpenPose-135 with pelvis/neck derived; feet, hands and face at confidence 0."""
    full = np.zeros(coco17.shape[:-2] + (133, 3), np.float32)
    full[..., :17, :] = coco17
    return coco_wholebody_to_openpose(full)


# ---------------------------------------------------------------------------------------------------- parsing
class _Mismatch(Exception):
    """Structure does not match the expected format (turned into an InputError with what was found)."""


def _load_json(path: Path) -> Any:
    if not path.exists():
        raise InputError(f"keypoints file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a keypoints .json file")
    try:
        validate.json_size(str(path), path.stat().st_size)  # refused before it is read into memory
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read keypoints ({' '.join(str(exc).split())})") from None
    return validate.load_json(text, str(path))  # size, nesting depth and syntax errors → one InputError line


def _instances(data: Any) -> tuple[str, list]:
    """Split a parsed JSON into (container kind, list of person/hand instances)."""
    if isinstance(data, dict):
        if "people" in data:
            return "openpose", _as_list(data["people"], "people")
        if "predictions" in data:  # MMPoseInferencer: {"predictions": [[inst, ...] per image]}
            preds = _as_list(data["predictions"], "predictions")
            if preds and isinstance(preds[0], list):
                preds = preds[0]
            return "instances", preds
        if "annotations" in data:
            return "coco", _as_list(data["annotations"], "annotations")
        if "keypoints" in data:
            return "instances", [data]
        return "unknown", []
    if isinstance(data, list):
        return "instances", data
    return "unknown", []


def _as_list(value: Any, field: str) -> list:
    if not isinstance(value, list):
        raise _Mismatch(f'"{field}" is a {type(value).__name__}, not a list')
    return value


def _points(value: Any, field: str, scores: Any = None) -> np.ndarray:
    """Keypoints as (K, 3): nested [[x, y, s]], nested [[x, y]] + scores, or flat [x, y, s, ...]."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _Mismatch(f'"{field}" is not a numeric array') from None
    if arr.ndim == 1:
        if arr.size % 3:
            raise _Mismatch(f'"{field}" has {arr.size} numbers; expected x, y, confidence triples')
        arr = arr.reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise _Mismatch(f'"{field}" has shape {arr.shape}; expected (K, 3) or (K, 2)')
    if arr.shape[1] == 2:
        if scores is None:
            raise _Mismatch(f'"{field}" holds (x, y) pairs but "keypoint_scores" is missing')
        try:
            s = np.asarray(scores, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise _Mismatch('"keypoint_scores" is not a numeric array') from None
        if len(s) != len(arr):
            raise _Mismatch(f'"keypoint_scores" has {len(s)} values for {len(arr)} keypoints')
        arr = np.concatenate([arr, s[:, None]], axis=1)
    return arr


def _bbox(inst: dict, xywh: bool = False) -> np.ndarray | None:
    box = inst.get("bbox")
    if box is None:
        return None
    try:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if b.size < 4:
        return None
    b = b[:4].copy()
    if xywh:
        b[2:] += b[:2]
    return b


def _parse_instance(inst: Any, i: int, kind: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """One instance → (K, 3) keypoints, bbox, structure name ('vitpose' | 'mmpose' | 'coco')."""
    if not isinstance(inst, dict) or "keypoints" not in inst:
        raise _Mismatch(f'person {i} has no "keypoints"')
    if kind == "coco":  # COCO annotation: flat body 17 (+ whole-body parts in separate fields)
        body = _points(inst["keypoints"], f"annotations[{i}].keypoints")
        parts = [inst.get(k) for k in ("foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")]
        if all(p is not None for p in parts) and len(body) == 17:
            body = np.concatenate([body] + [_points(p, f"annotations[{i}]") for p in parts])
        return body, _bbox(inst, xywh=True), "coco"
    scores = inst.get("keypoint_scores")
    kp = _points(inst["keypoints"], f"keypoints of person {i}", scores)
    structure = "mmpose" if scores is not None and np.asarray(inst["keypoints"]).shape[-1] == 2 else "vitpose"
    return kp, _bbox(inst), structure


def _describe(kind: str, items: list) -> str:
    """What a file holds, for mismatch messages."""
    if kind == "openpose":
        return f"OpenPose JSON with {len(items)} person(s)"
    if kind == "unknown":
        return 'no keypoint structure (no list of persons, "people", "predictions" or "annotations")'
    counts = set()
    for inst in items:
        try:
            counts.add(len(_parse_instance(inst, 0, kind)[0]))
        except _Mismatch:
            pass
    what = "person" if len(items) == 1 else "persons"
    if len(counts) == 1:
        k = counts.pop()
        name = f" ({_COUNT_NAMES[k]})" if k in _COUNT_NAMES else ""
        return f"a list of {len(items)} {what} with {k} keypoints{name}"
    return f"a list of {len(items)} {what}"


def _openpose_person(person: Any, i: int) -> np.ndarray:
    if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
        raise _Mismatch(f'people[{i}] has no "pose_keypoints_2d"')
    out = np.zeros((135, 3), np.float64)
    for field, sl, count in (
        ("pose_keypoints_2d", BODY25, 25),
        ("hand_left_keypoints_2d", LHAND, 21),
        ("hand_right_keypoints_2d", RHAND, 21),
        ("face_keypoints_2d", FACE68, 68),
    ):
        values = person.get(field) or []
        if not values and field != "pose_keypoints_2d":
            continue  # hands/face not detected or not requested from OpenPose
        pts = _points(values, f"people[{i}].{field}")
        if field == "face_keypoints_2d" and len(pts) == 70:
            pts = pts[:68]  # the last two are the pupils (not in the 68-point layout)
        if len(pts) != count:
            expected = "70 (or 68)" if field == "face_keypoints_2d" else str(count)
            raise InputError(
                f"people[{i}].{field} has {len(pts)} keypoints; expected {expected} (BODY_25 layout)"
            )
        out[sl] = pts
    return out


def _clean(kp: np.ndarray) -> np.ndarray:
    """NaN/inf, or coordinates beyond ±`validate.MAX_PIXEL` (their squares overflow float32) → 0 with confidence 0;
    confidence clipped to [0, 1]."""
    kp = kp.astype(np.float64, copy=True)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(kp).all(axis=-1) | (np.abs(kp[..., :2]) > validate.MAX_PIXEL).any(axis=-1)
    kp[bad] = 0.0
    kp[..., 2] = np.clip(kp[..., 2], 0.0, 1.0)
    return kp.astype(np.float32)


def read_keypoints(path: Path, fmt: str = "auto", *, part: str = "body") -> Keypoints2D:
    """Read one keypoints JSON file into OpenPose-ordered (P, K, 3) arrays.

    Args:
        path: the JSON file.
        fmt: one of KEYPOINT_FORMATS; "auto" detects the format from the structure.
        part: "body" or "wholebody" → ``openpose135``; "hand" → ``hand21``.

    Raises:
        InputError: missing file, malformed JSON (line/column), a structure that does not match `fmt`, zero
            persons, wrong keypoint counts, or all confidences zero — one line naming the file and field.
    """
    path = Path(path)
    if fmt not in KEYPOINT_FORMATS:
        raise InputError(f"unknown keypoint format {fmt!r}; choose one of {', '.join(KEYPOINT_FORMATS)}")
    if part not in KEYPOINT_PARTS:
        raise InputError(f"unknown keypoint part {part!r}; choose one of {', '.join(KEYPOINT_PARTS)}")
    data = _load_json(path)
    try:
        kind, items = _instances(data)
        if kind == "unknown":
            raise _Mismatch("no keypoint structure")
        if not items:
            where = {"openpose": '"people"', "coco": '"annotations"'}.get(kind, "the list of persons")
            raise InputError(f"{path}: no persons found ({where} is empty)")
        if kind == "openpose":
            if fmt not in ("auto", "openpose"):
                raise InputError(_mismatch_message(path, fmt, kind, items))
            kps = np.stack([_openpose_person(p, i) for i, p in enumerate(items)])
            source, bboxes, count = "openpose", None, 135
        else:
            parsed = [_parse_instance(inst, i, kind) for i, inst in enumerate(items)]
            counts = {len(p[0]) for p in parsed}
            if len(counts) > 1:
                raise InputError(f"{path}: persons have different keypoint counts ({sorted(counts)})")
            count = counts.pop()
            name = _source_name(count, parsed[0][2])
            if name is None:
                raise InputError(
                    f"{path}: keypoints of person 0 has {count} points; expected 133 (COCO-WholeBody), "
                    "17 (COCO body) or 21 (hand)"
                )
            source = name
            if not _matches(fmt, source):
                raise InputError(_mismatch_message(path, fmt, kind, items))
            kps = np.stack([p[0] for p in parsed])
            boxes = [p[1] for p in parsed if p[1] is not None]
            bboxes = np.stack(boxes).astype(np.float32) if len(boxes) == len(parsed) else None
    except _Mismatch as exc:
        if fmt == "auto":
            raise InputError(f"{path}: not a recognised keypoints file ({exc})") from None
        raise InputError(_mismatch_message(path, fmt, *_safe_instances(data))) from None
    except InputError as exc:
        if not exc.message.startswith(str(path)):  # field-level errors raised without the file name
            raise InputError(f"{path}: {exc.message}", hint=exc.hint) from None
        raise
    kps = _clean(kps)
    layout, kps = _to_layout(path, kps, count, part)
    relevant = kps[:, BODY25] if layout == "openpose135" and part == "body" else kps
    if not (relevant[..., 2] > 0).any():
        what = "body keypoints" if layout == "openpose135" and part == "body" else "keypoints"
        raise InputError(f"{path}: all {what} have confidence 0; nothing to fit")
    return Keypoints2D(kps, layout, source, bboxes, path)


def _safe_instances(data: Any) -> tuple[str, list]:
    try:
        return _instances(data)
    except _Mismatch:
        return "unknown", []


def _source_name(count: int, structure: str) -> str | None:
    if count == 133:
        return {"vitpose": "vitpose", "mmpose": "mmpose", "coco": "coco-wholebody"}[structure]
    if count == 21:
        return "mmpose-hand"
    if count == 17:
        return "coco17"
    return None


def _matches(fmt: str, source: str) -> bool:
    if fmt == "auto":
        return True
    if fmt in _WHOLEBODY_FORMATS:
        return source in ("vitpose", "mmpose", "coco-wholebody")
    return fmt == source


def _mismatch_message(path: Path, fmt: str, kind: str, items: list) -> str:
    return f"{path}: expected {_EXPECTED[fmt]}, found {_describe(kind, items)}; use --keypoint-format auto"


def _to_layout(path: Path, kps: np.ndarray, count: int, part: str) -> tuple[str, np.ndarray]:
    """Convert parsed keypoints to the layout the part needs."""
    if count == 21:
        if part != "hand":
            raise InputError(f"{path}: holds 21 hand keypoints per instance; use --part hand to fit a hand")
        return "hand21", kps
    if count == 133:
        kps = coco_wholebody_to_openpose(kps)
    elif count == 17:
        kps = coco17_to_openpose(kps)
    if part == "hand":
        return "hand21", np.ascontiguousarray(kps[:, RHAND])
    return "openpose135", kps
