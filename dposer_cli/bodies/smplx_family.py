"""SMPL-X, MANO and FLAME through the optional `smplx` package, as stateless batched models.

Each adapter validates the model file (keys, joint count, vertex count) and raises one-line
`AssetMismatchError`s naming the file and key; it then builds the smplx module once with `batch_size=1`
and passes every parameter explicitly on each call (flattened leading dims), so the module's own
parameters are never used. Model files never run code: `.npz` members are all read with
`allow_pickle=False` (a member holding pickled objects refuses the file) and `.pkl` files with
`pickle_compat` (no chumpy needed); smplx (which reloads with `allow_pickle=True`) only ever sees a
clean temporary copy of the validated arrays (SMPL-X, FLAME) or the arrays themselves (MANO). smplx prints warnings to stdout; they are sent to stderr so
`--json` output stays clean.
"""

import contextlib
import copy
import logging
import math
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, NoReturn, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn

from dposer_cli.bodies import pickle_compat
from dposer_cli.bodies.base import (
    BODY22_NAMES,
    OPENPOSE25_NAMES,
    BodyOutput,
    build_joint_sets,
    check_vertex_ids,
    expand_param,
    gather_params,
    hand21_names,
    lookup_joint_set,
)
from dposer_cli.bodies.kinematics import batch_rodrigues
from dposer_cli.core.errors import AssetMismatchError, UnavailableError
from dposer_cli.core.parts import FLAME_FILES, HAND_JOINTS
from dposer_cli.core.trace import TraceCache

log = logging.getLogger(__name__)
_SUBSET_TWINS = 4  # vertex-subset twins a model keeps (`_SmplxAdapter._subset_twin`)

# Every smplx constructor setting dposer relies on, in ONE place. smplx's own defaults differ (PCA hands
# with 6 components, no face contour, 10 expressions) and the official DPoser-X code mixes them; these
# match the whole-body / hand / face tasks (spec §7.7, §7.8, §7.10):
# * SMPL-X: full 45-d axis-angle hands (use_pca=False) and flat_hand_mean=False, i.e. zero hand
#   parameters = the SMPL-X mean hand (as mannequin-x); 10 betas; 100 expressions (v1.1 files; v1.0
#   files have 10); face contour on → 144 joints (55 skeleton + 21 vertex joints + 51 + 17 landmarks).
# * MANO: axis-angle hands, flat_hand_mean=False, 10 betas; the left model gets shapedirs[:, 0] *= -1
#   (smplx issue #48: MANO_LEFT.pkl ships the right hand's x shape directions).
# * FLAME: 100 shape and 100 expression coefficients, face contour on → 73 joints.
SMPLX_DEFAULTS: dict[str, dict[str, Any]] = {
    "smplx": {"gender": "neutral", "num_betas": 10, "num_expression_coeffs": 100, "use_pca": False,
              "flat_hand_mean": False, "use_face_contour": True, "batch_size": 1, "dtype": torch.float32},
    "mano": {"use_pca": False, "flat_hand_mean": False, "num_betas": 10, "batch_size": 1, "dtype": torch.float32},
    "flame": {"gender": "neutral", "num_betas": 100, "num_expression_coeffs": 100, "use_face_contour": True,
              "batch_size": 1, "dtype": torch.float32},
}  # fmt: skip
MANO_LEFT_SHAPEDIRS_FIX = True
MANO_TIP_VERTICES = (744, 320, 443, 554, 671)  # thumb, index, middle, ring, pinky (spec §7.7)

_REQUIRED = {
    "smplx": ("v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs", "shapedirs",
              "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr", "lmk_faces_idx",
              "lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords"),
    "mano": ("v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs", "shapedirs",
             "hands_components", "hands_mean"),
    "flame": ("v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs", "shapedirs"),
}  # fmt: skip
_JOINTS = {"smplx": 55, "mano": 16, "flame": 5}
# smplx indexes fixed vertex ids at forward time: SMPL-X's vertex joints reach id 9929, MANO tips 744
_MIN_VERTICES = {"smplx": 9930, "mano": max(MANO_TIP_VERTICES) + 1, "flame": 1}
_NAMES = {"smplx": "SMPL-X", "mano": "MANO", "flame": "FLAME"}
FLAME_EXTRAS = FLAME_FILES[1:]  # the landmark embeddings beside FLAME_NEUTRAL.pkl (core.parts: the one list)

# An smplx.SMPLX / MANO / FLAME module (an nn.Module). smplx ships no type information, so its attributes
# (`v_template`, `faces_tensor`, `vertex_joint_selector`, ...) are untyped; typed as `nn.Module` they would
# all read as `Tensor | Module`.
SmplxModule: TypeAlias = Any


def _smplx() -> Any:
    try:
        import smplx
    except ImportError:
        raise UnavailableError(
            "a real body-model file was found but the smplx package is not installed",
            hint="pip install dposer[smplx]",
        ) from None
    return smplx


def read_model_arrays(path: Path, model: str, *, everything: bool = True) -> dict[str, Any]:
    """Read and validate an SMPL-X / MANO / FLAME model file into plain NumPy arrays.

    With `everything=False` an `.npz` is only validated (its large arrays are left on disk) and the
    returned dict holds just the arrays that were checked.

    Raises:
        AssetMismatchError: unreadable file, a missing key, or shapes of another model.
    """
    path = Path(path)
    if path.suffix == ".npz":
        # every member is checked for pickled objects (even unused keys) before any array is read
        if pickle_compat.npz_object_members(path):
            pickle_compat.read_npz_plain(path)  # raises UnsafeFileError naming the member
        try:
            with np.load(path, allow_pickle=False) as npz:
                _validate(path, model, set(npz.files), lambda k: npz[k])
                keys = _REQUIRED[model] if everything else ("J_regressor", "v_template")
                return {k: npz[k] for k in keys}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise AssetMismatchError(f"{path} is not a readable .npz model file: {exc}") from None
    data = pickle_compat.load_pickle(path)
    if not isinstance(data, dict):
        raise AssetMismatchError(f"{path} holds a {type(data).__name__}, not a {_NAMES[model]} model dict")
    _validate(path, model, set(data), data.__getitem__)
    return data


def _validate(path: Path, model: str, keys: set[str], get: Any) -> None:
    # the joint count first: it is the clearest sign of a file of another model
    if "J_regressor" not in keys:
        _missing_key(path, model, "J_regressor")
    joints = np.shape(get("J_regressor"))[0]
    if joints != _JOINTS[model]:
        raise AssetMismatchError(
            f"{path}: J_regressor has {joints} joints; a {_NAMES[model]} model has "
            f"{_JOINTS[model]} (is this the right model file?)"
        )
    for key in _REQUIRED[model]:
        if key not in keys:
            _missing_key(path, model, key)
    verts = np.shape(get("v_template"))
    if len(verts) != 2 or verts[1] != 3 or verts[0] < _MIN_VERTICES[model]:
        raise AssetMismatchError(
            f"{path}: v_template has shape {verts}; expected (V ≥ {_MIN_VERTICES[model]}, 3) "
            f"for {_NAMES[model]}"
        )


def _plain(path: Path, key: str, value: Any) -> np.ndarray:
    """`value` as a plain (non-object) array for the clean copy handed to smplx."""
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise AssetMismatchError(f"{path}: {key} holds Python objects, not a numeric array")
    return arr


def _missing_key(path: Path, model: str, key: str) -> NoReturn:
    raise AssetMismatchError(f"{path} lacks key {key!r}; it is not a complete {_NAMES[model]} model file")


def _build(factory: Any, **kwargs: Any) -> SmplxModule:
    """Call a smplx constructor with stdout sent to stderr and its failures wrapped."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            module = factory(**kwargs)
    except (AssertionError, KeyError, ValueError, AttributeError, IndexError, RuntimeError, TypeError) as exc:
        raise AssetMismatchError(
            f"smplx could not build a model from {kwargs.get('model_path')}: {exc}"
        ) from None
    for p in module.parameters():  # smplx's per-module pose parameters are never used: freeze them
        p.requires_grad_(False)
    return module


def joint_vertices(model: SmplxModule, extra: Sequence[int] = ()) -> Tensor:
    """Sorted ids of the vertices smplx's forward reads to make joints: the vertex joints, every vertex of a
    landmark face (static, and the whole dynamic contour table), and `extra`."""
    faces = model.faces_tensor
    ids = [model.vertex_joint_selector.extra_joints_idxs.cpu(), torch.as_tensor(extra, dtype=torch.long)]
    for name in ("lmk_faces_idx", "dynamic_lmk_faces_idx"):
        idx = getattr(model, name, None)
        if idx is not None:
            ids.append(faces[idx.reshape(-1)].reshape(-1).cpu())
    return torch.unique(torch.cat(ids))


def joints_twin(model: SmplxModule, keep: Tensor) -> tuple[SmplxModule, Tensor]:
    """A copy of smplx `model` that makes the same joints from a cut mesh, and the vertex map old → new.

    The copy keeps the vertices `keep` (those joints read, see `joint_vertices`) and appends one
    pseudo-vertex per joint whose rest position and shape directions are the joint regressor applied to the
    whole mesh (done once here, in float64); its regressor picks those pseudo-vertices. smplx's own forward
    (pose blend shapes, dynamic contour, vertex joints) then skins a few hundred vertices instead of the
    whole mesh, and its joints equal the full model's to float rounding. Its vertices are the kept ones.
    """
    big = ("v_template", "shapedirs", "expr_dirs", "posedirs", "J_regressor", "lbs_weights", "faces_tensor")
    memo = {id(getattr(model, n)): torch.empty(0) for n in big if getattr(model, n, None) is not None}
    twin = copy.deepcopy(model, memo)  # the large arrays are replaced below, not copied
    reg = model.J_regressor.double()
    nj, nv, n = reg.shape[0], reg.shape[1], len(keep)
    dtype, device = model.v_template.dtype, model.v_template.device
    keep = keep.to(device)
    twin.v_template = torch.cat([model.v_template[keep], (reg @ model.v_template.double()).to(dtype)])
    for name in ("shapedirs", "expr_dirs"):
        dirs = getattr(model, name, None)
        if dirs is not None:
            regressed = torch.einsum("jv,vcl->jcl", reg, dirs.double()).to(dirs.dtype)
            setattr(twin, name, torch.cat([dirs[keep], regressed]))
    posedirs = model.posedirs.reshape(model.posedirs.shape[0], nv, 3)[:, keep]
    twin.posedirs = torch.cat([posedirs, posedirs.new_zeros(posedirs.shape[0], nj, 3)], 1).flatten(1)
    eye = torch.eye(nj, dtype=reg.dtype, device=device)
    twin.J_regressor = torch.cat([reg.new_zeros(nj, n), eye], 1).to(dtype)
    twin.lbs_weights = torch.cat([model.lbs_weights[keep], eye.to(model.lbs_weights.dtype)])
    remap = torch.zeros(nv, dtype=torch.long, device=device)
    remap[keep] = torch.arange(n, device=device)
    twin.faces_tensor = remap[model.faces_tensor]  # faces outside `keep` are never read
    twin.vertex_joint_selector.extra_joints_idxs = remap[model.vertex_joint_selector.extra_joints_idxs]
    return twin, remap


class _SmplxAdapter(nn.Module):
    """Shared call path: validate, broadcast, flatten, call smplx, reshape back.

    Joints-only calls (`return_vertices=False`) go to `twin` (see `joints_twin`), which skins only the
    vertices that joints are made of; calls for a vertex subset (`vertex_ids`) go to a twin that also keeps
    those (made on first use, a few kept).
    """

    kind = ""
    _dims: ClassVar[dict[str, int]] = {}
    _coeffs: ClassVar[dict[str, str]] = {}  # parameter -> attribute holding its size
    joint_names: tuple[str, ...]  # set by each model's __init__
    _sets: dict[str, Tensor]  # named joint sets, set by each model's __init__
    twin_extra: Tensor  # buffer: `extra_vertices` in the twin's vertex list

    def __init__(self, model: SmplxModule, path: Path, extra_vertices: Sequence[int] = ()) -> None:
        super().__init__()
        self.model: SmplxModule = model
        self.path = Path(path)
        self.num_betas = int(model.num_betas)
        self.num_expression = int(getattr(model, "num_expression_coeffs", 0) or 0)
        self._joint_ids = joint_vertices(model, extra_vertices)  # what joints read; every twin keeps them
        self.twin, remap = joints_twin(model, self._joint_ids)
        self._subset_twins: dict[bytes, tuple[SmplxModule, Tensor]] = {}
        self._trace = TraceCache()
        extra = remap[torch.as_tensor(extra_vertices, dtype=torch.long)]
        self.register_buffer("twin_extra", extra, persistent=False)

    @property
    def faces(self) -> Tensor:
        return self.model.faces_tensor

    @property
    def parents(self) -> Tensor:
        return self.model.parents

    def joint_set(self, name: str) -> Tensor:
        """Indices into the output joints of a named set (see `joint_sets`)."""
        return lookup_joint_set(self._sets, name, self.kind).to(self.model.v_template.device)

    @property
    def joint_sets(self) -> tuple[str, ...]:
        return tuple(self._sets)

    def _call(
        self, params: dict[str, Tensor | None], vertices: bool, vertex_ids: Tensor | None = None
    ) -> tuple[tuple[int, ...], Any]:
        """(batch, smplx output): the whole model's, the joints twin's (`vertices=False`) or, for `vertex_ids`,
        a subset twin's with `remap` (whole-mesh vertex id → its place in the twin's vertices) and `picked`
        (the asked-for vertices' places)."""
        batch, flat = self._flat(params)
        if vertices and vertex_ids is not None:
            ids = check_vertex_ids(vertex_ids, self.model.v_template.shape[0], self.model.v_template.device)
            twin, remap = self._subset_twin(ids)
            out = twin(**flat, return_verts=True)
            return batch, SimpleNamespace(
                joints=out.joints, vertices=out.vertices, remap=remap, picked=remap[ids]
            )
        if vertices:
            return batch, self.model(**flat, return_verts=True)
        # fits and IK call the twin hundreds of times: replayed from a recording (a pure function of `flat`)
        names = tuple(flat)
        joints, verts = self._trace.run(names, partial(self._twin, names), *flat.values())
        return batch, SimpleNamespace(joints=joints, vertices=verts)

    def _flat(self, params: dict[str, Tensor | None]) -> tuple[tuple[int, ...], dict[str, Tensor]]:
        """(batch shape, every smplx argument as an (N, dim) tensor: the given ones checked, the others zeros)."""
        dtype, device = self.model.v_template.dtype, self.model.v_template.device
        coeffs = {k: getattr(self, attr) for k, attr in self._coeffs.items()}
        batch, p = gather_params(
            params, self._dims, model=_NAMES[self.kind], dtype=dtype, device=device, coeffs=coeffs
        )
        n = math.prod(batch)
        sizes = {**self._dims, **coeffs}
        return batch, {
            k: expand_param(p.get(k), batch, d, dtype, device).reshape(n, d) for k, d in sizes.items()
        }

    @contextlib.contextmanager
    def holding_step(self, betas: Tensor) -> Iterator[tuple[Tensor, ...]]:
        """A replayed optimisation step of joints-only calls needs nothing from the model but its parameters:
        the twin is a pure function of them (`tasks.fit` plans its steps with this)."""
        yield ()

    def _subset_twin(self, ids: Tensor) -> tuple[SmplxModule, Tensor]:
        key = ids.cpu().numpy().tobytes()
        if key not in self._subset_twins:
            keep = torch.unique(torch.cat([self._joint_ids, ids.cpu()]))
            if len(self._subset_twins) >= _SUBSET_TWINS:
                del self._subset_twins[next(iter(self._subset_twins))]
            self._subset_twins[key] = joints_twin(self.model, keep)
        return self._subset_twins[key]

    @staticmethod
    def _vertices(out: Any) -> Tensor:
        """The vertices a call asked for from `_call`'s output (a subset's in the order of its `vertex_ids`)."""
        picked = getattr(out, "picked", None)
        return out.vertices if picked is None else out.vertices.index_select(1, picked)

    def _twin(self, names: tuple[str, ...], *values: Tensor) -> tuple[Tensor, Tensor]:
        out = self.twin(**dict(zip(names, values, strict=True)), return_verts=True)
        return out.joints, out.vertices

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "_SmplxAdapter":
        self._trace.clear()  # recordings hold the old buffers
        self._subset_twins.clear()
        return super()._apply(fn, recurse)


class SMPLXBody(_SmplxAdapter):
    """SMPL-X (kind "smplx") from a `.npz` or `.pkl` file; 144 joints (smplx's JOINT_NAMES)."""

    kind = "smplx"
    _dims: ClassVar[dict[str, int]] = {
        "global_orient": 3,
        "body_pose": 63,
        "left_hand_pose": 45,
        "right_hand_pose": 45,
        "jaw_pose": 3,
        "leye_pose": 3,
        "reye_pose": 3,
        "transl": 3,
    }
    _coeffs: ClassVar[dict[str, str]] = {"betas": "num_betas", "expression": "num_expression"}

    def __init__(self, path: Path) -> None:
        smplx = _smplx()
        path = Path(path)
        data = read_model_arrays(path, "smplx")
        # smplx reloads its file with np.load(allow_pickle=True) and has no data_struct argument: it always
        # gets a clean copy of the validated plain arrays (its own pkl reader would also need chumpy)
        with tempfile.TemporaryDirectory(prefix="dposer-smplx-") as tmp:
            src = Path(tmp) / "SMPLX_NEUTRAL.npz"
            np.savez(src, allow_pickle=False, **{k: _plain(path, k, data[k]) for k in _REQUIRED["smplx"]})
            model = _build(smplx.SMPLX, model_path=str(src), ext="npz", **SMPLX_DEFAULTS["smplx"])
        super().__init__(model, path)
        from smplx.joint_names import JOINT_NAMES

        self.joint_names = tuple(JOINT_NAMES[:144])
        self._sets = build_joint_sets(
            self.joint_names,
            {
                "body22": BODY22_NAMES,
                "openpose25": OPENPOSE25_NAMES,
                "lhand21": hand21_names("left_"),
                "rhand21": hand21_names("right_"),
                "face68": (
                    *JOINT_NAMES[127:144],
                    *JOINT_NAMES[76:127],
                ),  # contour first (OpenPose face, §7.8)
            },
        )

    def kinematics(self, **params: Tensor | None) -> tuple[Tensor, Tensor]:
        """The skeleton as forward kinematics sees it: local rotation matrices (*batch, 55, 3, 3) of the
        kinematic joints (`parents` order: root, 21 body joints, jaw, eyes, left and right hand) with the mean
        hand added (smplx's `full_pose`), and the rest joints (55, 3) they turn (all rotations identity: the
        hands flat) at the first row's `betas` (expression zero)."""
        batch, flat = self._flat(params)
        order = ("global_orient", "body_pose", "jaw_pose", "leye_pose", "reye_pose", "left_hand_pose",
                 "right_hand_pose")  # fmt: skip
        full = torch.cat([flat[k] for k in order], 1) + self.model.pose_mean
        rotations = batch_rodrigues(full.reshape(len(full), -1, 3)).reshape(*batch, -1, 3, 3)
        hands = -self.model.pose_mean[
            -90:
        ]  # hand poses cancelling the mean hand: every rotation the identity
        with torch.no_grad():
            rest = self(
                betas=flat["betas"][:1],
                left_hand_pose=hands[None, :45],
                right_hand_pose=hands[None, 45:],
                return_vertices=False,
            ).joints
        return rotations, rest.reshape(-1, rest.shape[-1])[: rotations.shape[-3]]

    def forward(
        self, *, return_vertices: bool = True, vertex_ids: Tensor | None = None, **params: Tensor | None
    ) -> BodyOutput:
        """Pose SMPL-X; missing parameters are zeros."""
        batch, out = self._call(params, return_vertices, vertex_ids)
        return BodyOutput(
            joints=out.joints.reshape(*batch, -1, 3),
            vertices=self._vertices(out).reshape(*batch, -1, 3) if return_vertices else None,
        )


class MANOBody(_SmplxAdapter):
    """MANO (kind "mano"): 16 joints + 5 finger-tip vertices (thumb, index, middle, ring, pinky)."""

    kind = "mano"
    _dims: ClassVar[dict[str, int]] = {"global_orient": 3, "hand_pose": 45, "transl": 3}
    _coeffs: ClassVar[dict[str, str]] = {"betas": "num_betas"}
    tip_ids: Tensor  # buffer: MANO_TIP_VERTICES

    def __init__(self, path: Path, side: str = "right") -> None:
        smplx = _smplx()
        path = Path(path)
        data = read_model_arrays(path, "mano")
        from smplx.utils import Struct

        model = _build(
            smplx.MANO,
            model_path=str(path),
            data_struct=Struct(**data),
            is_rhand=side == "right",
            **SMPLX_DEFAULTS["mano"],
        )
        if side == "left" and MANO_LEFT_SHAPEDIRS_FIX:
            with torch.no_grad():
                model.shapedirs[:, 0, :] *= -1
        super().__init__(model, path, extra_vertices=MANO_TIP_VERTICES)
        self.side = side
        self.register_buffer("tip_ids", torch.tensor(MANO_TIP_VERTICES), persistent=False)
        self.joint_names = ("wrist", *HAND_JOINTS, "thumb", "index", "middle", "ring", "pinky")
        self._sets = build_joint_sets(
            self.joint_names, {"hand21": hand21_names(""), "mano16": self.joint_names[:16]}
        )

    def forward(
        self, *, return_vertices: bool = True, vertex_ids: Tensor | None = None, **params: Tensor | None
    ) -> BodyOutput:
        """Pose MANO; missing parameters are zeros (zero hand_pose = the mean hand)."""
        batch, out = self._call(params, return_vertices, vertex_ids)
        if not return_vertices:
            tips = self.twin_extra
        else:
            tips = self.tip_ids if vertex_ids is None else out.remap[self.tip_ids]
        joints = torch.cat([out.joints, out.vertices[:, tips]], dim=1)
        return BodyOutput(
            joints=joints.reshape(*batch, -1, 3),
            vertices=self._vertices(out).reshape(*batch, -1, 3) if return_vertices else None,
        )


class FLAMEBody(_SmplxAdapter):
    """FLAME (kind "flame"): 5 joints + 51 landmarks + 17 contour landmarks = 73 joints (spec §7.10)."""

    kind = "flame"
    _dims: ClassVar[dict[str, int]] = {
        "global_orient": 3,
        "neck_pose": 3,
        "jaw_pose": 3,
        "leye_pose": 3,
        "reye_pose": 3,
        "transl": 3,
    }
    _coeffs: ClassVar[dict[str, str]] = {"betas": "num_betas", "expression": "num_expression"}

    def __init__(self, path: Path) -> None:
        smplx = _smplx()
        path = Path(path)
        folder = path.parent
        for extra in FLAME_EXTRAS:
            if not (folder / extra).is_file():
                raise AssetMismatchError(
                    f"{folder} has {path.name} but no {extra} (FLAME landmark embedding); "
                    "put it beside the model"
                )
        data = read_model_arrays(path, "flame")
        static = pickle_compat.load_pickle(folder / FLAME_EXTRAS[0])
        dynamic = pickle_compat.load_npy_object(folder / FLAME_EXTRAS[1])
        for name, emb in ((FLAME_EXTRAS[0], static), (FLAME_EXTRAS[1], dynamic)):
            for key in ("lmk_face_idx", "lmk_b_coords"):
                if not isinstance(emb, dict) or key not in emb:
                    raise AssetMismatchError(
                        f"{folder / name} lacks key {key!r}; it is not a FLAME landmark embedding"
                    )
        # smplx reads FLAME and both embeddings from one folder: give it a converted, code-free copy
        with tempfile.TemporaryDirectory(prefix="dposer-flame-") as tmp:
            np.savez(
                Path(tmp) / "FLAME_NEUTRAL.npz",
                allow_pickle=False,
                **{k: _plain(path, k, data[k]) for k in _REQUIRED["flame"]},
            )
            (Path(tmp) / FLAME_EXTRAS[0]).write_bytes(
                pickle_compat.dumps_plain(
                    {k: np.asarray(static[k]) for k in ("lmk_face_idx", "lmk_b_coords")}
                )
            )
            dyn = np.empty((), dtype=object)
            dyn[()] = {k: np.asarray(dynamic[k]) for k in ("lmk_face_idx", "lmk_b_coords")}
            np.save(Path(tmp) / FLAME_EXTRAS[1], dyn, allow_pickle=True)
            model = _build(smplx.FLAME, model_path=tmp, ext="npz", **SMPLX_DEFAULTS["flame"])
        super().__init__(model, path)
        from smplx.joint_names import JOINT_NAMES

        self.joint_names = ("root", "neck", "jaw", "left_eye", "right_eye", *JOINT_NAMES[76:144])
        self._sets = build_joint_sets(
            self.joint_names,
            {"flame73": self.joint_names, "face68": self.joint_names[56:] + self.joint_names[5:56]},
        )

    def forward(
        self, *, return_vertices: bool = True, vertex_ids: Tensor | None = None, **params: Tensor | None
    ) -> BodyOutput:
        """Pose FLAME; missing parameters are zeros."""
        batch, out = self._call(params, return_vertices, vertex_ids)
        return BodyOutput(
            joints=out.joints.reshape(*batch, -1, 3),
            vertices=self._vertices(out).reshape(*batch, -1, 3) if return_vertices else None,
        )
