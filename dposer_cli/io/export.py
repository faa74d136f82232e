"""Body exports that other tools open: meshes (GLB, OBJ, PLY via trimesh) and skeleton motion (BVH) (issue #18).

Meshes: ``glb`` writes ONE file, a glTF scene with one node (and mesh) per pose, named ``<stem>_0000``, …;
``obj`` and ``ply`` hold one mesh per file, so one pose is written to the given file and several poses to a
folder of ``<stem>_0000.<fmt>``, … files. trimesh (5.x) writes neither glTF animations nor skins (its glTF
exporter has no ``animations``/``skins`` support), so a motion is exported as one mesh per frame; its
animation lives in the BVH.

BVH: the body model's kinematic tree with the rest offsets as ``OFFSET``s, metres, y up (SMPL-X axes).
Every joint has three rotation channels ``Zrotation Xrotation Yrotation`` (degrees): the local rotation
matrix is R = Rz(z) · Rx(x) · Ry(y), i.e. intrinsic Euler ZXY, the order most BVH files use; the root has
``Xposition Yposition Zposition`` first. The root's ``OFFSET`` is zero and its position channels hold its
absolute position (rest position + translation), which Blender's importer, "offset + channels" readers
and "channels are the position" readers all place identically. Angles are unwrapped over time (a ±360°
change of one channel is the same rotation), so interpolating keys does not spin a joint around.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int

from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.paths import atomic_write

MESH_FORMATS = ("glb", "obj", "ply")
EXPORT_FORMATS = (*MESH_FORMATS, "bvh")
BVH_EULER_ORDER = "ZXY"  # channel order; intrinsic: R = Rz · Rx · Ry
_END_SITE_LENGTH = 0.05  # metres: End Site of a leaf whose own offset is zero (Blender needs a bone tail)


# ---------------------------------------------------------------------------------------------------- meshes
def mesh_paths(path: Path, fmt: str, count: int) -> list[Path]:
    """Where `write_meshes` puts `count` poses: one file (glb, or a single pose), else a folder of files."""
    fmt = _check_format(fmt, MESH_FORMATS)
    path = Path(path)
    if path.suffix.lower() == f".{fmt}":
        path = path.with_suffix("")
    if fmt == "glb" or count == 1:
        return [path.with_name(f"{path.name}.{fmt}")]
    return [path / f"{path.name}_{i:04d}.{fmt}" for i in range(count)]


def write_meshes(
    path: Path,
    vertices: Float[np.ndarray, "B V 3"],
    faces: Int[np.ndarray, "F 3"],
    fmt: str,
) -> list[Path]:
    """Write B meshes sharing `faces` (atomically) and return the files written (see `mesh_paths`).

    Args:
        path: the file (``poses.glb``; the suffix is added when missing) or, for several OBJ/PLY poses,
            the folder (``poses`` or ``poses.obj`` → ``poses/poses_0000.obj``, …).
        vertices: metres, one mesh per row.
        faces: vertex indices, shared by every mesh.
        fmt: one of MESH_FORMATS.

    Raises:
        InputError: an unknown format, no meshes, faces that index missing vertices, non-finite vertices,
            or a file that cannot be written.
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    paths = mesh_paths(path, fmt, len(vertices))
    if not len(vertices):
        raise InputError(f"{path}: no meshes to export")
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[1]):
        raise InputError(f"{path}: faces index vertices outside 0..{vertices.shape[1] - 1}")
    if not np.isfinite(vertices).all():
        raise InputError(f"{path}: the meshes hold non-finite vertices (NaN or inf)")
    import trimesh  # imported on use: ≈ 0.7 s of start-up that commands without --export never need

    meshes = [trimesh.Trimesh(v, faces, process=False) for v in vertices]  # process=False: keep every vertex
    if fmt == "glb":
        scene = trimesh.Scene()
        stem = paths[0].stem
        for i, mesh in enumerate(meshes):
            name = f"{stem}_{i:04d}"
            scene.add_geometry(mesh, node_name=name, geom_name=name)
        _write_bytes(paths[0], scene.export(file_type="glb"))
        return paths
    for mesh, out in zip(meshes, paths):
        _write_bytes(out, mesh.export(file_type=fmt))
    return paths


def _write_bytes(path: Path, data: object) -> None:
    """Write what trimesh's export returned (text for OBJ, bytes for PLY and GLB)."""
    if not isinstance(data, bytes | str):
        raise TypeError(f"trimesh export returned {type(data).__name__}, not bytes or text")
    with atomic_write(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def _check_format(fmt: str, choices: Sequence[str]) -> str:
    if fmt not in choices:
        raise InputError(f"unknown export format {fmt!r}{suggest(fmt, list(choices))}",
                         hint="formats: " + ", ".join(choices))  # fmt: skip
    return fmt


# ---------------------------------------------------------------------------------------------------- BVH
def euler_zxy_degrees(rotations_aa: Float[np.ndarray, "*batch 3"]) -> Float[np.ndarray, "*batch 3"]:
    """Axis-angle (radians) → BVH angles (z, x, y) in degrees with R = Rz(z) · Rx(x) · Ry(y)."""
    aa = np.asarray(rotations_aa, dtype=np.float64)
    flat = aa.reshape(-1, 3)
    # scipy: upper-case axes are intrinsic, so "ZXY" is Rz · Rx · Ry; gimbal lock (|x| = 90°) is resolved
    # by scipy with y = 0 (and warns; the rotation is still exact)
    from scipy.spatial.transform import Rotation  # imported on use (start-up)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        angles = Rotation.from_rotvec(flat).as_euler(BVH_EULER_ORDER, degrees=True)
    return angles.reshape(aa.shape)


def _children(parents: Sequence[int]) -> tuple[int, list[list[int]]]:
    """The root and each joint's children, after checking `parents` is one tree."""
    n = len(parents)
    roots = [j for j, p in enumerate(parents) if p < 0]
    if len(roots) != 1:
        raise InputError(f"a BVH skeleton needs exactly one root joint (parent -1), got {len(roots)}")
    children: list[list[int]] = [[] for _ in range(n)]
    for j, p in enumerate(parents):
        if p >= n:
            raise InputError(f"joint {j} has parent {p}, outside 0..{n - 1}")
        if p >= 0:
            children[p].append(j)
    seen, stack = set(), [roots[0]]
    while stack:
        j = stack.pop()
        seen.add(j)
        stack.extend(children[j])
    if len(seen) != n:
        raise InputError(f"the skeleton is not a tree: joints {sorted(set(range(n)) - seen)} are unreachable")
    return roots[0], children


def bvh_text(
    joint_names: Sequence[str],
    parents: Sequence[int],
    offsets: Float[np.ndarray, "J 3"],
    rotations_aa: Float[np.ndarray, "T J 3"],
    root_translation: Float[np.ndarray, "T 3"],
    fps: float,
) -> str:
    """The BVH file as text (see `write_bvh`)."""
    offsets = np.asarray(offsets, dtype=np.float64)
    rotations_aa = np.asarray(rotations_aa, dtype=np.float64)
    root_translation = np.asarray(root_translation, dtype=np.float64)
    n = len(parents)
    if len(joint_names) != n or offsets.shape != (n, 3) or rotations_aa.shape[1:] != (n, 3):
        raise InputError(
            f"BVH: {len(joint_names)} names, {len(parents)} parents, offsets {offsets.shape} and rotations "
            f"{rotations_aa.shape} must all describe the same {n} joints"
        )
    if root_translation.shape != (len(rotations_aa), 3):
        raise InputError(f"BVH: root translation {root_translation.shape}; expected ({len(rotations_aa)}, 3)")
    if not len(rotations_aa):
        raise InputError("BVH: no frames to export")
    if not fps > 0:
        raise InputError(f"BVH: the frame rate must be positive (got {fps})")
    if not (
        np.isfinite(offsets).all() and np.isfinite(rotations_aa).all() and np.isfinite(root_translation).all()
    ):
        raise InputError("BVH: offsets, rotations or translations are not finite (NaN or inf)")
    names = ["_".join(str(name).split()) or f"joint{j}" for j, name in enumerate(joint_names)]
    if len(set(names)) != n:
        raise InputError("BVH: joint names must be unique")
    root, children = _children([int(p) for p in parents])

    lines = ["HIERARCHY"]
    order: list[int] = []  # joints in the order of their channels in MOTION (depth first)

    def joint(j: int, depth: int) -> None:
        pad = "\t" * depth
        order.append(j)
        if j == root:
            lines.append(f"ROOT {names[j]}")
            lines.append("{")
            lines.append(f"{pad}\tOFFSET 0.000000 0.000000 0.000000")
            lines.append(f"{pad}\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation")
        else:
            lines.append(f"{pad}JOINT {names[j]}")
            lines.append(f"{pad}{{")
            lines.append(f"{pad}\tOFFSET {_vec(offsets[j])}")
            lines.append(f"{pad}\tCHANNELS 3 Zrotation Xrotation Yrotation")
        for c in children[j]:
            joint(c, depth + 1)
        if not children[j]:  # a leaf: End Site along its own bone (BVH readers need one)
            own = offsets[j] if j != root else np.zeros(3)
            norm = float(np.linalg.norm(own))
            tip = own * 0.5 if norm > 1e-6 else np.array([0.0, _END_SITE_LENGTH, 0.0])
            lines.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET {_vec(tip)}", f"{pad}\t}}"])
        lines.append(f"{pad}}}")

    joint(root, 0)
    # unwrap: a 360° jump in one channel is the same rotation, but interpolated keys would spin through it
    angles = np.unwrap(euler_zxy_degrees(rotations_aa[:, order]), period=360.0, axis=0)
    position = root_translation + offsets[root]
    lines += ["MOTION", f"Frames: {len(rotations_aa)}", f"Frame Time: {1.0 / fps:.8f}"]
    for t in range(len(rotations_aa)):
        lines.append(_vec(position[t]) + " " + " ".join(_vec(a) for a in angles[t]))
    return "\n".join(lines) + "\n"


def _vec(values: np.ndarray) -> str:
    return " ".join(f"{float(v):.6f}" for v in values)


def write_bvh(
    path: Path,
    joint_names: Sequence[str],
    parents: Sequence[int],
    offsets: Float[np.ndarray, "J 3"],
    rotations_aa: Float[np.ndarray, "T J 3"],
    root_translation: Float[np.ndarray, "T 3"],
    fps: float,
) -> Path:
    """Write a skeleton motion as BVH (atomically): ZXY Euler channels in degrees, metres.

    Forward kinematics of the file reproduces the body model's joints: with rest joints ``J`` of the
    model (zero pose, its shape), ``offsets[j] = J[j] - J[parents[j]]`` and ``offsets[root] = J[root]``;
    the root's position channel is ``offsets[root] + root_translation[t]``.

    Args:
        path: the .bvh file.
        joint_names: one name per joint (whitespace becomes "_").
        parents: each joint's parent index, -1 for the single root.
        offsets: rest offset of each joint from its parent, metres; the root's rest position for the root.
        rotations_aa: local joint rotations per frame, axis-angle radians (SMPL-X `global_orient` for the
            root, `body_pose` for the others).
        root_translation: SMPL-X `transl` per frame, metres.
        fps: frames per second (``Frame Time`` = 1 / fps).

    Raises:
        InputError: inconsistent sizes, not one tree, non-finite values, fps ≤ 0, or an unwritable path.
    """
    text = bvh_text(joint_names, parents, offsets, rotations_aa, root_translation, fps)
    path = Path(path)
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return path
