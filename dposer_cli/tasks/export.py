"""Bodies as arrays other tools open: poses / fitted parameters → meshes and BVH skeleton motion (issue #18).

Tensors in, numpy arrays out (no paths, no files): the services write them with `io.export`
(`write_meshes(path, m.vertices, m.faces, fmt)`, `write_bvh(path, *motion.bvh_args())`).

    from dposer_cli import load_body
    from dposer_cli.tasks.export import body_meshes, part_params, skeleton_motion
    body = load_body("body")
    meshes = body_meshes(body, part_params(Part.body, poses))          # (B, V, 3) vertices + faces
    motion = skeleton_motion(body, {"body_pose": ..., "global_orient": ..., "transl": ...}, fps=30)

BVH holds the body skeleton: the model's first 22 joints (pelvis + the 21 SMPL-X body joints, the joints a
body pose drives) with its kinematic tree, the rest offsets of the model's shape (zero pose) and per frame the
local rotations ``cat(global_orient, body_pose)`` and the translation. Whole-body poses (with hand poses) on a
model that reports its local rotations get its whole tree: SMPL-X's 55 joints (jaw, eyes, fingers), the
mannequin's 54 (fingers, and its fixed palm joints). A BVH
has one skeleton, so a batch with several shapes is written with the first row's shape.

``upright=True`` turns fits in camera coordinates (x right, y down, z forward: `tasks.fit`) upright for
viewers: a half turn about x, so y is up and the camera looks along −z (the OpenGL camera frame).
"""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.rotations import compose_axis_angle, matrix_to_axis_angle
from dposer_cli.io.export import EXPORT_FORMATS

log = logging.getLogger(__name__)

BVH_JOINTS = 22  # pelvis + the 21 body joints
HAND_KEYS = ("left_hand_pose", "right_hand_pose")  # with these, the BVH holds the whole tree (fingers too)
BVH_PARTS = (Part.body, Part.wholebody)  # parts whose poses drive the body skeleton
MESH_CHUNK = 64  # poses posed per body-model call
GLB_WARN_BYTES = 100 * 2**20  # a bigger GLB gets a warning that recommends BVH
_UPRIGHT = (math.pi, 0.0, 0.0)  # half turn about x: camera (y down) → viewer (y up)


@dataclass(frozen=True)
class BodyMeshes:
    """Meshes sharing one face list, metres."""

    vertices: Float[np.ndarray, "B V 3"]
    faces: Int[np.ndarray, "F 3"]


@dataclass(frozen=True)
class SkeletonMotion:
    """A skeleton and its motion, in the argument order of `io.export.write_bvh` (see `bvh_args`)."""

    joint_names: tuple[str, ...]
    parents: tuple[int, ...]  # -1 for the root
    offsets: Float[np.ndarray, "J 3"]  # rest offset from the parent (the root: its rest position), metres
    rotations_aa: Float[np.ndarray, "T J 3"]  # local rotations, axis-angle radians
    root_translation: Float[np.ndarray, "T 3"]  # SMPL-X `transl`, metres
    fps: float

    @property
    def frames(self) -> int:
        return len(self.rotations_aa)

    def bvh_args(self) -> tuple:
        """(joint_names, parents, offsets, rotations_aa, root_translation, fps) for `write_bvh(path, *args)`."""
        return (
            self.joint_names,
            self.parents,
            self.offsets,
            self.rotations_aa,
            self.root_translation,
            self.fps,
        )


def check_formats(formats: Sequence[str], *, part: Part | None = None, what: str = "") -> tuple[str, ...]:
    """The `--export` formats, each once, in the given order.

    Args:
        formats: names from `EXPORT_FORMATS`.
        part: the poses' part; BVH needs body poses (`BVH_PARTS`).
        what: the command's output in words, for the BVH error ("hand IK results").

    Raises:
        InputError: an unknown format (with a suggestion), or BVH for a part without a body skeleton.
    """
    out: list[str] = []
    for fmt in formats:
        fmt = str(fmt).lower().lstrip(".")
        if fmt not in EXPORT_FORMATS:
            raise InputError(
                f"unknown --export format {fmt!r}{suggest(fmt, list(EXPORT_FORMATS))}",
                hint="formats: " + ", ".join(EXPORT_FORMATS),
            )
        if fmt not in out:
            out.append(fmt)
    if "bvh" in out and part is not None and Part(part) not in BVH_PARTS:
        raise InputError(
            f"--export bvh writes body motions; {what or Part(part).value + ' poses'} have no body skeleton",
            hint="use --export glb, obj or ply for meshes",
        )
    return tuple(out)


def part_params(part: Part, poses: Float[Tensor, "*batch D"]) -> dict[str, Tensor]:
    """Split part vectors into body-model keyword arguments (hand models take `hand_pose`)."""
    params = {k: poses[..., s] for k, s in PARTS[Part(part)].slices().items()}
    return {"hand_pose": params["hand_pose"]} if Part(part) is Part.hand else params


def _rows(params: Mapping[str, Tensor]) -> int:
    sizes = {int(v.shape[0]) for v in params.values() if v is not None and v.ndim > 1}
    if len(sizes) != 1:
        raise InputError(f"export: the parameters hold different numbers of rows ({sorted(sizes)})")
    return sizes.pop()


def upright_params(params: Mapping[str, Tensor], root_rest: Float[Tensor, " 3"]) -> dict[str, Tensor]:
    """Camera-frame parameters (y down, z forward) turned a half turn about x (y up, camera looking along −z).

    The model rotates about its root joint (rest position `root_rest`, at `root_rest + transl` when posed),
    so the translation is moved to keep the root where the turn puts it.
    """
    out = dict(params)
    orient = params.get("global_orient")
    n = _rows(params)
    ref = next(v for v in params.values() if v is not None)
    flip = torch.tensor(_UPRIGHT, dtype=ref.dtype, device=ref.device).expand(n, 3)
    orient = torch.zeros(n, 3, dtype=ref.dtype, device=ref.device) if orient is None else orient
    out["global_orient"] = compose_axis_angle(flip, orient)
    transl = params.get("transl")
    root = root_rest.to(ref) + (transl if transl is not None else 0.0)
    out["transl"] = root * torch.tensor([1.0, -1.0, -1.0], dtype=ref.dtype, device=ref.device) - root_rest.to(
        ref
    )
    return out


def _root_rest(body: BodyModel, params: Mapping[str, Tensor]) -> Tensor:
    betas = params.get("betas")
    with torch.no_grad():
        rest = body(betas=betas[:1] if betas is not None else None, return_vertices=False).joints
    return rest.reshape(-1, rest.shape[-2], 3)[0, 0]


def body_meshes(
    body: BodyModel, params: Mapping[str, Tensor], *, upright: bool = False, chunk: int = MESH_CHUNK
) -> BodyMeshes:
    """The model's meshes at B rows of parameters (any model keywords, one row each), float32.

    Raises:
        InputError: the model has no mesh, or the rows disagree.
    """
    if body.faces is None:
        raise InputError(
            f"the {body.kind} model has no mesh to export", hint="use --export bvh for a skeleton"
        )
    params = {k: v for k, v in params.items() if v is not None}
    n = _rows(params)
    if upright:
        params = upright_params(params, _root_rest(body, params))
    parts = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            out = body(**{k: v[start : start + chunk] for k, v in params.items()}, return_vertices=True)
            if out.vertices is None:
                raise InputError(f"the {body.kind} model returned no vertices to export")
            parts.append(out.vertices.detach().to(torch.float32).cpu().numpy())
    return BodyMeshes(np.concatenate(parts, 0), body.faces.detach().cpu().numpy().astype(np.int64))


def skeleton_motion(
    body: BodyModel, params: Mapping[str, Tensor], *, fps: float = 30.0, upright: bool = False
) -> SkeletonMotion:
    """The BVH skeleton of `body` and T rows of `body_pose` (+ `global_orient`, `transl`, `betas`) as its motion.

    With hand poses (`left_hand_pose` / `right_hand_pose`: whole-body fits and samples) and a model that
    reports its kinematics (`kinematics`: the mannequin, SMPL-X), the skeleton is the model's whole kinematic
    tree, fingers included; else its first 22 joints.

    Raises:
        InputError: no `body_pose`, or a model without the 22 body joints as the start of its tree.
    """
    pose = params.get("body_pose")
    if pose is None:
        raise InputError("--export bvh needs body poses (body_pose)")
    params = {k: v for k, v in params.items() if v is not None}
    kinematics = getattr(body, "kinematics", None)  # optional in the `BodyModel` protocol
    hands = any(k in params for k in HAND_KEYS) and callable(kinematics)
    count = len(body.parents) if hands else BVH_JOINTS
    parents = [int(p) for p in body.parents[:count].tolist()]
    if len(parents) < BVH_JOINTS or max(parents) >= count or parents.count(-1) != 1:
        raise InputError(f"the {body.kind} model has no 22-joint body skeleton to export as BVH")
    t = _rows(params)
    betas = params.get("betas")
    if betas is not None and t > 1 and not bool(torch.allclose(betas, betas[:1].expand_as(betas))):
        log.warning("the poses have different body shapes; the BVH skeleton has the first one's")
    if upright:
        params = upright_params(params, _root_rest(body, params))
    if hands and kinematics is not None:  # the whole tree: the rotations and rest joints its kinematics turns
        with torch.no_grad():
            local, rest = kinematics(**{k: v for k, v in params.items() if k != "transl"})
        rotations = matrix_to_axis_angle(local.reshape(t, count, 3, 3).double())
        rest_np = rest[:count].double().cpu().numpy()
    else:  # zero pose = the rest skeleton for the body joints
        with torch.no_grad():
            rest = body(betas=betas[:1] if betas is not None else None, return_vertices=False).joints
        rest_np = rest.reshape(-1, rest.shape[-2], 3)[0, :count].double().cpu().numpy()
        orient = params.get("global_orient")
        orient = torch.zeros(t, 3, dtype=pose.dtype, device=pose.device) if orient is None else orient
        rotations = torch.cat([orient[:, None], pose.reshape(t, BVH_JOINTS - 1, 3)], dim=1)
    offsets = np.array([rest_np[j] - rest_np[p] if p >= 0 else rest_np[j] for j, p in enumerate(parents)])
    transl = params.get("transl")
    transl = torch.zeros(t, 3, dtype=pose.dtype, device=pose.device) if transl is None else transl
    return SkeletonMotion(
        tuple(str(n) for n in body.joint_names[:count]),
        tuple(parents),
        offsets,
        rotations.detach().double().cpu().numpy(),
        transl.detach().double().cpu().numpy(),
        float(fps),
    )


def glb_bytes(count: int, num_vertices: int, num_faces: int) -> int:
    """About how large a GLB of `count` meshes is (float32 positions, uint32 indices)."""
    return count * (num_vertices * 12 + num_faces * 12)


def export_data(
    body: BodyModel,
    params: Mapping[str, Tensor],
    formats: Sequence[str],
    *,
    fps: float = 30.0,
    upright: bool = False,
    name: str = "bodies",
) -> dict[str, BodyMeshes | SkeletonMotion]:
    """Per format (of `check_formats`): the meshes (posed once for every mesh format) or the skeleton motion.

    Logs a warning recommending BVH when a GLB of the meshes would be large (`GLB_WARN_BYTES`); `name` is
    the file stem it names.
    """
    out: dict[str, BodyMeshes | SkeletonMotion] = {}
    meshes = None
    for fmt in formats:
        if fmt == "bvh":
            out[fmt] = skeleton_motion(body, params, fps=fps, upright=upright)
            continue
        meshes = meshes or body_meshes(body, params, upright=upright)
        out[fmt] = meshes
    if meshes is not None and "glb" in out:
        count, num_vertices = meshes.vertices.shape[:2]
        size = glb_bytes(count, num_vertices, len(meshes.faces))
        if size >= GLB_WARN_BYTES:
            log.warning(
                "%s.glb holds %d meshes (about %.0f MB); for long motions --export bvh is far smaller",
                name,
                count,
                size / 2**20,
            )
    return out
