"""IK targets files (`dposer ik --targets`): 3D joint targets, or ground-truth parameters (evaluation).

Either `joints` (N, J, 3) in metres [+ `visible` (N, J) bool] [+ fixed parameters such as the hand's
`global_orient`/`betas`], or ground-truth parameters (`hand_pose`, `jaw_pose` + `expression` + `betas`, or
`poses` holding the part's concatenated pose keys). The joint order and the keys are the caller's (the IK
task's per-part table); this module only reads and validates.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Float

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError
from dposer_cli.io.poses import holds_pickle, open_npz, unsafe_data


@dataclass(frozen=True)
class IKTargets:
    """What a targets file holds: joint targets (`joints` set) or ground-truth parameters (`params` set)."""

    joints: Float[np.ndarray, "N J 3"] | None = None  # float32; NaN/inf at hidden joints replaced by 0
    visible: Bool[np.ndarray, "N J"] | None = None
    known: dict[str, np.ndarray] = field(default_factory=dict)  # fixed parameters given with the joints
    params: dict[str, np.ndarray] = field(default_factory=dict)  # ground truth (evaluation mode), float32


def _read_npz(path: Path, used: set[str]) -> dict[str, np.ndarray]:
    """The file's arrays; a member holding pickled objects is refused (`UnsafeFileError`) when it is one of
    `used`, else left out unread."""
    out: dict[str, np.ndarray] = {}
    with open_npz(Path(path), "targets file") as data:
        for k in data.files:
            try:
                out[k] = data[k]
            except ValueError as exc:
                if not holds_pickle(exc):
                    raise InputError(f"{path}: {k} is not readable ({str(exc).splitlines()[0]})") from None
                if k in used:
                    raise unsafe_data(path, k) from None
    return out


def _array(
    data: Mapping[str, np.ndarray],
    key: str,
    path: Path,
    dim: int | None,
    n: int | None,
    *,
    up_to: bool = False,
) -> np.ndarray:
    arr = np.asarray(data[key])
    if arr.ndim == 1 and dim is not None and n is None:
        arr = arr[None]
    ok = (
        arr.ndim == 2
        and (n is None or arr.shape[0] == n)
        and (dim is None or arr.shape[1] == dim or (up_to and 0 < arr.shape[1] <= dim))
    )
    if not ok or not np.issubdtype(arr.dtype, np.number):
        want = f"(N, {'≤' if up_to else ''}{dim})" if n is None else f"({n}, {'≤' if up_to else ''}{dim})"
        raise InputError(f"{path}: {key} has shape {arr.shape}; expected {want}")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: {key} contains NaN or infinite values")
    validate.magnitude(arr, f"{path}: {key}", unit="(radians, metres or coefficients)")
    return arr.astype(np.float32)


def _read_joints(
    data: Mapping[str, np.ndarray],
    path: Path,
    part: str,
    joint_set: str,
    num_joints: int,
    known: Mapping[str, int],
    up_to: Sequence[str],
) -> IKTargets:
    joints = np.asarray(data["joints"])
    if joints.ndim != 3 or joints.shape[1:] != (num_joints, 3) or joints.shape[0] == 0:
        raise InputError(
            f"{path}: joints has shape {joints.shape}; expected (N, {num_joints}, 3) for "
            f"--part {part} ({joint_set} joint order)"
        )
    if not np.issubdtype(joints.dtype, np.number):
        raise InputError(f"{path}: joints must be numbers, got dtype {joints.dtype}")
    n = joints.shape[0]
    if "visible" in data:
        visible = np.asarray(data["visible"])
        if visible.shape != (n, num_joints):
            raise InputError(f"{path}: visible has shape {visible.shape}; expected ({n}, {num_joints})")
        visible = visible.astype(bool)
    else:
        visible = np.ones((n, num_joints), dtype=bool)
    bad = ~np.isfinite(joints).all(-1) & visible
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"{path}: joints has NaN or infinite values at sample {i}, joint {j} "
            f"({int(bad.sum())} visible joint(s) in all)",
            hint="fix the values or mark those joints False in `visible`",
        )
    fixed = {k: _array(data, k, path, d, n, up_to=k in up_to) for k, d in known.items() if k in data}
    return IKTargets(joints=np.nan_to_num(joints.astype(np.float32)), visible=visible, known=fixed)


def read_ik_targets(
    path: Path,
    *,
    part: str,
    joint_set: str,
    num_joints: int,
    known: Mapping[str, int],
    params: Mapping[str, int],
    pose_keys: Sequence[str],
    up_to: Sequence[str] = ("betas", "expression"),
) -> IKTargets:
    """Read and validate a targets file.

    `known`: fixed parameters that may come with joint targets (key → width); `params`: the ground-truth
    parameter keys (key → width); `pose_keys`: the keys a `poses` array concatenates (the shared reference
    files: hand (N, 45), face (N, 103 = jaw 3 + expression 100)); `up_to`: keys whose width may be smaller
    (leading shape / expression coefficients). `part`, `joint_set` and `num_joints` name the joint layout.

    Raises:
        InputError: missing/unreadable file, wrong shapes, NaNs at visible joints, no usable keys.
        UnsafeFileError: an array it reads holds pickled Python objects (nothing of it runs).
    """
    path = Path(path)
    data = _read_npz(path, {"joints", "visible", "poses", *known, *params})
    if "joints" in data:
        return _read_joints(data, path, part, joint_set, num_joints, known, up_to)
    gt: dict[str, np.ndarray] = {}
    if "poses" in data:
        width = sum(params[k] for k in pose_keys)
        poses = _array(data, "poses", path, width, None)
        start = 0
        for k in pose_keys:
            gt[k] = poses[:, start : start + params[k]]
            start += params[k]
    for k, d in params.items():
        if k in data and k not in gt:
            gt[k] = _array(data, k, path, d, None, up_to=k in up_to)
    if not gt:
        keys = ", ".join(["joints", "poses", *params])
        raise InputError(
            f"{path} holds none of the keys {keys} (found: {', '.join(data) or 'nothing'})",
            hint=f"give `joints` (N, {num_joints}, 3) in {joint_set} order, or ground-truth parameters",
        )
    sizes = {v.shape[0] for v in gt.values()}
    if len(sizes) != 1 or 0 in sizes:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in gt.items())
        raise InputError(f"{path}: parameter arrays disagree on N or are empty: {shapes}")
    return IKTargets(params=gt)
