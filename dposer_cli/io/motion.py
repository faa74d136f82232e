"""Motion npz files: AMASS, the official `pose_body`/`root_orient` fragments, ours, or 3D joints (spec §7.4).

Accepted layouts, tried in this order:

- AMASS `poses` (T, 156) SMPL+H or (T, 165) SMPL-X with `trans` and `mocap_framerate` / `mocap_frame_rate`;
- `pose_body` (T, 63) with optional `root_orient` (T, 3) and `trans` (official motion fragments, AMASS stage-ii);
- ours: `body_pose` (T, 63) with optional `global_orient` (T, 3), `transl` (T, 3) and `fps`;
- `joints` (T, J, 3) in metres, alone or next to poses (observations given directly).

`fps` subsamples files that record their frame rate (stride = round(rate / fps)); others keep every frame.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float

from dposer_cli.core.errors import InputError
from dposer_cli.core.paths import atomic_write
from dposer_cli.io.poses import AMASS_LAYOUTS, check_finite, frame_rate, frame_stride, load_key, open_npz

MIN_FRAMES = 2


@dataclass
class Motion:
    """A body motion: axis-angle poses and/or 3D joints, per frame."""

    body_pose: Float[np.ndarray, "T 63"] | None  # axis-angle, radians
    global_orient: Float[np.ndarray, "T 3"] | None
    transl: Float[np.ndarray, "T 3"] | None  # metres
    joints: Float[np.ndarray, "T J 3"] | None  # metres, given directly instead of poses
    fps: float | None
    source_format: str  # "amass-smplh" | "amass-smplx" | "pose_body" | "dposer" | "joints"

    @property
    def num_frames(self) -> int:
        frames = self.body_pose if self.body_pose is not None else self.joints
        return 0 if frames is None else len(frames)


def _first(npz, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in npz.files), None)


def _optional(
    npz, key: str | None, path: Path, shape: tuple[int | None, ...], stride: int
) -> np.ndarray | None:
    """`_array` of `key`, or None when the file has no such key (`key` is None)."""
    return None if key is None else _array(npz, key, path, shape, stride)


def _array(npz, key: str, path: Path, shape: tuple[int | None, ...], stride: int) -> np.ndarray:
    """Load `key`, check its shape against `shape` (None = any), subsample frames, cast to float32."""
    arr = load_key(npz, key, path)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{path}: {key} has dtype {arr.dtype}; expected real numbers")
    if arr.ndim != len(shape) or any(want is not None and got != want for got, want in zip(arr.shape, shape)):
        want = (
            "("
            + ", ".join("T" if i == 0 else ("J" if w is None else str(w)) for i, w in enumerate(shape))
            + ")"
        )
        raise InputError(f"{path}: {key} has shape {arr.shape}; expected {want}")
    arr = np.ascontiguousarray(arr[::stride], dtype=np.float32)
    check_finite(arr, key, path)
    return arr


def read_motion(path: Path, *, fps: float | None = None) -> Motion:
    """Read a motion sequence (see the module docstring for the layouts).

    Raises:
        InputError: missing/unreadable file, no motion keys (lists the keys found), wrong shapes, frame counts
            that disagree, fewer than 2 frames ("a motion needs at least 2 frames"), or NaN/inf values.
    """
    path = Path(path)
    with open_npz(path, "motion file") as npz:
        rate = frame_rate(npz, path)
        stride = frame_stride(rate, fps)
        body = orient = transl = None
        fmt = None
        if "poses" in npz.files:
            poses = load_key(npz, "poses", path)
            if poses.ndim == 2 and poses.shape[1] in AMASS_LAYOUTS:
                fmt, layout = AMASS_LAYOUTS[poses.shape[1]]
                full = _array(npz, "poses", path, (None, poses.shape[1]), stride)
                body, orient = full[:, layout["body_pose"]], full[:, layout["global_orient"]]
                transl = _optional(npz, _first(npz, ("trans", "transl")), path, (None, 3), stride)
        if fmt is None:
            body_key = _first(npz, ("pose_body", "body_pose"))
            if body_key is None and "poses" in npz.files and load_key(npz, "poses", path).shape[1:] == (63,):
                body_key = "poses"  # what `generate` and `complete` write
            if body_key is not None:
                fmt = "pose_body" if body_key == "pose_body" else "dposer"
                body = _array(npz, body_key, path, (None, 63), stride)
                orient = _optional(
                    npz, _first(npz, ("root_orient", "global_orient")), path, (None, 3), stride
                )
                transl = _optional(npz, _first(npz, ("trans", "transl")), path, (None, 3), stride)
        joints = _array(npz, "joints", path, (None, None, 3), stride) if "joints" in npz.files else None
        if body is None and joints is None:
            keys = ", ".join(npz.files) or "none"
            raise InputError(
                f"{path}: no motion found (keys: {keys}); expected `pose_body` (T, 63), `body_pose` (T, 63), "
                "AMASS `poses` (T, 156|165) or `joints` (T, J, 3)"
            )
        fmt = fmt or "joints"
        lengths = {k: len(v) for k, v in (("poses", body), ("global_orient", orient), ("transl", transl),
                                          ("joints", joints)) if v is not None}  # fmt: skip
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} {n}" for k, n in lengths.items())
            raise InputError(f"{path}: frame counts differ ({detail})")
        frames = next(iter(lengths.values()))
        if frames < MIN_FRAMES:
            raise InputError(f"{path}: has {frames} frame(s); a motion needs at least {MIN_FRAMES} frames")
        return Motion(body, orient, transl, joints, None if rate is None else rate / stride, fmt)


def write_motion(path: Path | str, **arrays: np.ndarray | float | None) -> Path:
    """Write arrays (e.g. body_pose, global_orient, transl, joints, fps) to an npz atomically; returns the path."""
    path = Path(path)
    data = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    with atomic_write(path) as fh:
        np.savez(fh, **data)  # type: ignore[arg-type]  # numpy's stubs read **kwds as allow_pickle
    return path
