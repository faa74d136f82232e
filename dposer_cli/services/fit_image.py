"""`dposer fit-image`: body, hand and whole-body mesh recovery from 2D keypoints (spec §7.6–§7.8).

Every person in every image (or every frame of a folder) is one row of ONE batched optimisation: per-row
focal length and principal point, staged Adam (camera translation → orientation → pose with the prior
annealed across stages), per-row choice between hypotheses (the side-view flip for bodies, the two
mirror-ambiguous palm orientations for hands). Outputs per image: `<stem>.npz` (parameters per person)
and `<stem>_overlay.png` (mesh and keypoints over the photo).

Differences from the official code (spec §14.1): the side-view second pass is chosen per person, not
for the whole batch; x/y of the initial translation come from the keypoints (not 0); the pose starts
from the prior's mean pose (the official SMPL mean-pose file is not redistributed); hands get a
closed-form orientation init instead of the mean MANO orientation.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies.base import BodyModel, load_body
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import DposerError, InputError, suggest
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import atomic_write, ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.services._fitting import (
    PRIOR_KINDS,
    PriorTerm,
    Stage,
    angle_prior,
    best_rows,
    gmof,
    optimize,
    prior_steps,
    temporal_smoothness,
)

log = logging.getLogger(__name__)

FIT_PARTS = (Part.body, Part.hand, Part.wholebody)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SIGMA_PX = 100.0  # GMoF scale (spec §7.6)
CONF_THRESHOLD = 0.2  # keypoints below this confidence are ignored
MIN_KEYPOINTS = {Part.body: 4, Part.wholebody: 4, Part.hand: 4}  # usable keypoints a person needs
DEPTH_WEIGHT = 100.0  # camera stages: 100²·(tz − tz_anchor)² (spec §7.6–§7.8)
SIDE_VIEW_PX = 25.0  # shoulders closer than this in the image (or than SIDE_VIEW_RATIO·torso) → try both facings
SIDE_VIEW_RATIO = 0.35
TEMPORAL_WEIGHT = 1.0e4  # video --temporal: per-metre weight of the joint-acceleration term

# OpenPose-25 indices (spec §7.6)
OP_RSHOULDER, OP_LSHOULDER, OP_RHIP, OP_LHIP, OP_NECK, OP_MIDHIP = 2, 5, 9, 12, 1, 8
BODY_CAMERA_JOINTS = (OP_RSHOULDER, OP_LSHOULDER, OP_RHIP, OP_LHIP)
BODY_DEPTH_EDGES = ((OP_LSHOULDER, OP_LHIP), (OP_RSHOULDER, OP_RHIP))
BODY_IGNORED = (OP_NECK, OP_RHIP, OP_LHIP)  # SMPL-X hips/neck sit elsewhere than detectors put them
HAND_CAMERA_JOINTS = (0, 1, 5, 9, 13, 17)
HAND_DEPTH_EDGES = ((0, 1), (0, 5), (0, 9), (0, 13), (0, 17))
HAND_PALM = (0, 5, 9, 13, 17)

# per-stage weights (spec §7.6 body, §7.7 hand, §7.8 whole body); prior weights are squared in the loss
BODY_WEIGHTS = {"prior": (50, 20, 10, 5, 2), "shape": (50, 20, 10, 5, 2), "angle": (150, 50, 30, 15, 5)}
WHOLEBODY_WEIGHTS = {"prior": (50, 20, 10, 5, 2), "shape": (50, 20, 10, 5, 2), "angle": (50, 20, 10, 5, 2),
                     "hands": (0, 0, 0, 0.2, 0.5), "face": (0, 0, 0, 0, 0.2)}  # fmt: skip
HAND_WEIGHTS = {"prior": (30, 10, 10, 5, 5), "shape": (50, 20, 10, 5, 5)}
# whole body: root-relative hand/face keypoint term, 5 × (the stage's hand/face weight)². Spec §7.8 applies 5×
# from the first stage on; before the arms are placed that pulls the whole chain (torso twisted to turn a
# wrist), so here it follows the same stage weights as the absolute hand/face keypoints.
ROOT_RELATIVE_WEIGHT = 5.0


@dataclass(frozen=True)
class FitImageRequest:
    images: tuple[Path, ...]
    out: Path
    part: Part = Part.body
    keypoints: tuple[Path, ...] = ()
    keypoint_format: str = "auto"
    person: str = "all"
    init: tuple[Path, ...] = ()
    focal: float | None = None
    steps: int = 100
    prior: str = "dposer"
    body_model: Path | None = None
    checkpoint: Path | None = None
    normalizer: Path | None = None
    # Python API: an already-built prior of `part` (a DPoserPrior, or a baseline from engine.baselines such as
    # the GMM) used instead of loading one; `prior` is then only its label in the outputs
    prior_model: Any = None
    renderer: str = "auto"
    device: str = "auto"
    seed: int = 0
    temporal: bool = False
    overlay: bool = True
    conf_threshold: float = CONF_THRESHOLD


@dataclass
class Frame:
    """One picture and its keypoints."""

    image: Path
    keypoints: Path
    stem: str
    sequence: int  # folder index in video mode, -1 for single images
    height: int = 0
    width: int = 0


@dataclass
class Persons:
    """The batch: one row per fitted person."""

    kp: Tensor  # (B, K, 3) keypoints in the fit layout (x px, y px, confidence; 0 = unused)
    raw: list[np.ndarray]  # per row: the person's keypoints as read (for the npz / overlay)
    focal: Tensor  # (B,)
    center: Tensor  # (B, 2)
    size: Tensor  # (B, 2) image (H, W)
    frame: Tensor  # (B,) index into frames
    person: Tensor  # (B,) index of the person in its keypoint file
    track: Tensor  # (B,) betas row (per person in images; per person index along a sequence)


@dataclass
class Layout:
    """How keypoints map to model joints for this part and model."""

    model_idx: Tensor  # (K,) model joint per keypoint
    groups: dict[str, slice]  # "body", "lhand", "rhand", "face" (whole body) or "hand"
    kp_keep: Tensor  # (K,) which of the read keypoints are used, in order
    edges: list[tuple[int, int]] = field(default_factory=list)


# ---------------------------------------------------------------- inputs
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _keypoints_beside(image: Path, explicit_dir: Path | None) -> tuple[Path | None, list[Path]]:
    name = image.stem + ".json"
    tried = []
    if explicit_dir is not None:
        tried.append(explicit_dir / name)
    tried.append(image.with_suffix(".json"))
    if image.parent.name == "images":  # official examples layout: images/ + predictions/
        tried.append(image.parent.parent / "predictions" / name)
    tried.append(image.parent / "predictions" / name)
    tried.append(image.parent / "keypoints" / name)
    return next((p for p in tried if p.is_file()), None), tried


def resolve_frames(images: Sequence[Path], keypoints: Sequence[Path]) -> list[Frame]:
    """Pair images (or folders of frames) with keypoint files.

    Raises:
        InputError: no images, missing files, a count mismatch or a keypoint file that cannot be found.
    """
    if not images:
        raise InputError("no images given", hint="dposer fit-image photo.jpg --keypoints photo.json --out fits/")
    frames: list[Frame] = []
    folders = [Path(p) for p in images if Path(p).is_dir()]
    if folders and len(folders) != len(images):
        raise InputError("give either image files or folders of frames, not both")
    if folders:
        kp_dirs: list[Path | None]
        if keypoints:
            if len(keypoints) != len(folders) or not all(Path(k).is_dir() for k in keypoints):
                raise InputError(
                    f"{len(folders)} frame folder(s) need as many keypoint folders with --keypoints "
                    f"(got {len(keypoints)})"
                )
            kp_dirs = [Path(k) for k in keypoints]
        else:
            kp_dirs = [None] * len(folders)
        for s, (folder, kp_dir) in enumerate(zip(folders, kp_dirs, strict=True)):
            files = _image_files(folder)
            if not files:
                raise InputError(f"frame folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for i, img in enumerate(files):
                found, tried = _keypoints_beside(img, kp_dir)
                if found is None:
                    raise InputError(f"no keypoints for frame {img} (looked for {', '.join(map(str, tried))})",
                                     hint="pass the keypoint folder with --keypoints")
                stem = img.stem if len(folders) == 1 else f"{folder.name}_{img.stem}"  # several videos: no clashes
                frames.append(Frame(img, found, stem, s))
        return frames
    if keypoints and len(keypoints) != len(images):
        raise InputError(f"{len(images)} image(s) but {len(keypoints)} keypoint file(s); give one --keypoints per image")
    for i, img in enumerate(images):
        img = Path(img)
        if not img.exists():
            raise InputError(f"image not found: {img}")
        if keypoints:
            kp = Path(keypoints[i])
            if not kp.is_file():
                raise InputError(f"keypoint file not found: {kp}")
        else:
            found, tried = _keypoints_beside(img, None)
            if found is None:
                raise InputError(f"no keypoints for {img} (looked for {', '.join(map(str, tried))})",
                                 hint="pass --keypoints KP.json (OpenPose, ViTPose/COCO-WholeBody or MMPose JSON)")
            kp = found
        frames.append(Frame(img, kp, img.stem, -1))
    stems = [f.stem for f in frames]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise InputError(f"two images share the name {dup!r}; their outputs would overwrite each other")
    return frames


def _person_filter(spec: str) -> int | None:
    if spec == "all":
        return None
    try:
        index = int(spec)
    except ValueError:
        raise InputError(f"--person must be 'all' or a person index (0, 1, ...), got {spec!r}") from None
    if index < 0:
        raise InputError(f"--person must be 'all' or a person index ≥ 0, got {index}")
    return index


def build_layout(part: Part, model: BodyModel, kp_layout: str) -> Layout:
    """Keypoint ↔ model-joint correspondence for the part (spec §7.6–§7.8)."""
    from dposer_cli.io.keypoints import HAND21_EDGES, OPENPOSE25_EDGES

    if part is Part.hand:
        if kp_layout != "hand21":
            raise InputError(f"--part hand needs 21 hand keypoints; these keypoints are {kp_layout}",
                             hint="use MMPose hand JSON, or --part wholebody for whole-body keypoints")
        idx = model.joint_set("hand21")
        return Layout(idx, {"hand": slice(0, 21)}, torch.arange(21), list(HAND21_EDGES))
    if kp_layout != "openpose135":
        raise InputError(f"--part {part.value} needs body keypoints; these keypoints are {kp_layout}",
                         hint="use --part hand for 21-point hand keypoints")
    body = model.joint_set("openpose25")
    if part is Part.body:
        return Layout(body, {"body": slice(0, 25)}, torch.arange(25), list(OPENPOSE25_EDGES))
    parts = [body, model.joint_set("lhand21"), model.joint_set("rhand21")]
    groups = {"body": slice(0, 25), "lhand": slice(25, 46), "rhand": slice(46, 67)}
    keep = list(range(67))
    try:
        parts.append(model.joint_set("face68"))
        groups["face"] = slice(67, 135)
        keep += list(range(67, 135))
    except DposerError:
        log.info("face keypoints skipped: the %s body model has no face landmarks", model.kind)
    edges = list(OPENPOSE25_EDGES) + [(a + 25, b + 25) for a, b in HAND21_EDGES] + \
        [(a + 46, b + 46) for a, b in HAND21_EDGES]
    return Layout(torch.cat(parts), groups, torch.tensor(keep), edges)


def read_persons(frames: list[Frame], req: FitImageRequest, part: Part, device: torch.device
                 ) -> tuple[Persons, str, dict[int, int]]:
    """Read every keypoint file and image size, select persons, stack the batch.

    Returns the batch, the keypoint layout and, per frame, the number of persons fitted.
    """
    from dposer_cli.io.keypoints import read_keypoints
    from dposer_cli.io.media import read_image

    only = _person_filter(req.person)
    video = frames[0].sequence >= 0
    kps, focals, centers, sizes, frame_ids, person_ids, tracks = [], [], [], [], [], [], []
    layouts = set()
    per_frame: dict[int, int] = {}
    for f_idx, frame in enumerate(frames):
        image = read_image(frame.image)
        frame.height, frame.width = int(image.shape[0]), int(image.shape[1])
        del image
        try:
            read = read_keypoints(frame.keypoints, req.keypoint_format, part=part.value)
        except InputError as exc:
            # a video frame without detections is normal: skip it (format errors still stop the run)
            if video and ("no persons found" in exc.message or "confidence 0" in exc.message):
                log.warning("frame %s skipped: %s", frame.image.name, exc.message)
                per_frame[f_idx] = 0
                continue
            raise
        layouts.add(read.layout)
        arr = np.asarray(read.keypoints, dtype=np.float32)
        rows = range(arr.shape[0]) if only is None else [only]
        if only is not None and only >= arr.shape[0]:
            raise InputError(f"--person {only}: {frame.keypoints} has only {arr.shape[0]} person(s) (0..{arr.shape[0] - 1})")
        n_here = 0
        for p in rows:
            used = arr[p, :25] if part is Part.body else arr[p]
            usable = int((used[:, 2] >= req.conf_threshold).sum())
            if usable < MIN_KEYPOINTS[part]:
                if only is not None or (arr.shape[0] == 1 and not video):
                    raise InputError(
                        f"{frame.keypoints}: person {p} has {usable} keypoint(s) with confidence ≥ "
                        f"{req.conf_threshold} (all-zero or too low); at least {MIN_KEYPOINTS[part]} are needed"
                    )
                log.warning("%s: person %d skipped (%d confident keypoints)", frame.keypoints.name, p, usable)
                continue
            kps.append(arr[p])
            f = req.focal if req.focal is not None else cam.estimate_focal(frame.width, frame.height)
            focals.append(float(f))
            centers.append((frame.width / 2, frame.height / 2))
            sizes.append((frame.height, frame.width))
            frame_ids.append(f_idx)
            person_ids.append(p)
            tracks.append((frame.sequence, p) if video else (-1, len(tracks)))
            n_here += 1
        if n_here == 0 and not video:
            raise InputError(
                f"{frame.keypoints}: no person has at least {MIN_KEYPOINTS[part]} keypoints with confidence ≥ "
                f"{req.conf_threshold}"
            )
        per_frame[f_idx] = n_here
    if not kps:
        raise InputError("no person with usable keypoints in any frame")
    if len(layouts) > 1:
        raise InputError(f"the keypoint files mix layouts ({', '.join(sorted(layouts))}); fit them separately")
    track_ids = {t: i for i, t in enumerate(dict.fromkeys(tracks))}
    kp = torch.as_tensor(np.stack(kps), dtype=torch.float32, device=device)
    kp[..., 2] = torch.where(kp[..., 2] >= req.conf_threshold, kp[..., 2], torch.zeros_like(kp[..., 2]))
    kp = torch.nan_to_num(kp)
    batch = Persons(
        kp=kp,
        raw=kps,
        focal=torch.tensor(focals, dtype=torch.float32, device=device),
        center=torch.tensor(centers, dtype=torch.float32, device=device),
        size=torch.tensor(sizes, dtype=torch.float32, device=device),
        frame=torch.tensor(frame_ids, device=device),
        person=torch.tensor(person_ids, device=device),
        track=torch.tensor([track_ids[t] for t in tracks], device=device),
    )
    return batch, layouts.pop(), per_frame


def read_init(paths: Sequence[Path], frames: list[Frame], batch: Persons) -> dict[str, Tensor]:
    """Parameters from `--init` npz files (one per image, rows = persons of its keypoint file)."""
    if not paths:
        return {}
    if len(paths) != len(frames):
        raise InputError(f"{len(frames)} image(s) but {len(paths)} --init file(s); give one per image")
    keys = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "hand_pose", "jaw_pose",
            "expression", "betas", "transl")
    tables: list[dict[str, np.ndarray]] = []
    for path in paths:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                table = {k: np.asarray(data[k], dtype=np.float32) for k in data.files if k in keys}
                if "person_index" in data.files:
                    table["person_index"] = np.asarray(data["person_index"]).astype(np.int64)
        except FileNotFoundError:
            raise InputError(f"--init file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read --init file {path}: {str(exc).splitlines()[0][:200]}") from None
        if not any(k in table for k in keys):
            raise InputError(f"--init file {path} has none of the keys {', '.join(keys)}")
        tables.append(table)
    out: dict[str, list[np.ndarray]] = {}
    frame_ids, person_ids = batch.frame.tolist(), batch.person.tolist()
    for f_idx, p in zip(frame_ids, person_ids, strict=True):
        table = tables[f_idx]
        index = table.get("person_index")
        row = p if index is None else int(np.flatnonzero(index == p)[0]) if (index == p).any() else -1
        for k, arr in table.items():
            if k == "person_index":
                continue
            arr = arr.reshape(1, -1) if arr.ndim == 1 else arr.reshape(arr.shape[0], -1)
            if row < 0 or row >= arr.shape[0]:
                raise InputError(f"--init file {paths[f_idx]}: no row for person {p} in {k!r} ({arr.shape[0]} rows)")
            out.setdefault(k, []).append(arr[row])
    return {k: torch.as_tensor(np.stack(v), device=batch.kp.device) for k, v in out.items()}


# ---------------------------------------------------------------- the fit
@dataclass
class FitState:
    """Free parameters and row bookkeeping. Rows are hypotheses; several rows may share a sample."""

    params: dict[str, Tensor]  # per-row parameters, plus "betas": one row per track
    row: Tensor  # (R,) sample (batch person) of each row
    track: Tensor  # (R,) betas row of each row
    anchor: Tensor  # (R,) depth (m) the camera stages are held near

    def take(self, rows: Tensor, shared_shape: bool) -> "FitState":
        """Rows `rows` (selected or duplicated) as a new state; betas follow rows unless shared per track."""
        params = {k: v.detach()[rows].clone() for k, v in self.params.items() if k != "betas"}
        betas = self.params["betas"].detach()
        if shared_shape:
            params["betas"], track = betas.clone(), self.track[rows]
        else:
            params["betas"], track = betas[self.track[rows]].clone(), torch.arange(len(rows), device=rows.device)
        return FitState(params, self.row[rows], track, self.anchor[rows])


class Fitter:
    """Loss terms and stage schedules of one part (spec §7.6 body, §7.7 hand, §7.8 whole body)."""

    def __init__(self, part: Part, model: BodyModel, layout: Layout, batch: Persons, steps: int,
                 free_keys: tuple[str, ...], shared_shape: bool, prior: PriorTerm | None = None) -> None:
        self.part, self.model, self.layout, self.batch = part, model, layout, batch
        self.prior = prior or PriorTerm("none", None, total_steps=1)
        self.steps, self.free_keys, self.shared_shape = steps, free_keys, shared_shape
        self.kp = batch.kp[:, layout.kp_keep]  # (B, K, 3)
        k, dev = self.kp.shape[1], batch.kp.device
        self.conf_scale = torch.ones(k, device=dev)
        self.body_mask = torch.ones(k, device=dev)
        if part is Part.hand:
            self.conf_scale[0] = 2.0  # wrist confidence ×2 (spec §7.7)
        else:
            self.body_mask[list(BODY_IGNORED)] = 0.0
        self.neighbours: tuple[Tensor, Tensor] | None = None  # temporal pass: previous / next row per row

    # ---- model and camera
    def forward(self, state: FitState, *, vertices: bool = False):  # type: ignore[no-untyped-def]
        return self.forward_params(self.model, state.params, state.track, vertices=vertices)

    @staticmethod
    def forward_params(model: BodyModel, params: dict[str, Tensor], track: Tensor, *, vertices: bool = False):  # type: ignore[no-untyped-def]
        """The model at per-row parameters, with each row's betas taken from its track."""
        p = {k: v for k, v in params.items() if k != "betas"}
        return model(**p, betas=params["betas"][track], return_vertices=vertices)

    def project(self, state: FitState, joints: Tensor) -> Tensor:
        b = state.row
        return cam.perspective_project(joints[:, self.layout.model_idx], self.batch.focal[b], self.batch.center[b])

    # ---- loss terms, per row
    def camera_loss(self, state: FitState) -> Tensor:
        """Σ conf²·‖proj − kp‖² over torso (palm) keypoints + 100²·(tz − anchor)² (spec §7.6 stage 1)."""
        sel = list(HAND_CAMERA_JOINTS if self.part is Part.hand else BODY_CAMERA_JOINTS)
        proj = self.project(state, self.forward(state).joints)[:, sel]
        kp = self.kp[state.row][:, sel]
        conf = kp[..., 2] * self.conf_scale[sel]
        err = ((proj - kp[..., :2]) ** 2).sum(-1)
        depth = DEPTH_WEIGHT**2 * (state.params["transl"][:, 2] - state.anchor) ** 2
        return (conf**2 * err).sum(-1) + depth

    def data_term(self, state: FitState, proj: Tensor, stage: int) -> Tensor:
        """Robust reprojection term Σ (w·c)²·GMoF(proj − kp) (+ root-relative terms for hands/face)."""
        kp = self.kp[state.row]
        conf = kp[..., 2] * self.conf_scale
        res = gmof(proj - kp[..., :2], SIGMA_PX).sum(-1)  # (R, K)
        if self.part is Part.hand:  # 0.8 absolute + 0.2 wrist-relative (spec §7.7)
            return 0.8 * (conf**2 * res).sum(-1) + 0.2 * self._relative(proj, kp, conf, slice(0, 21))
        w = conf * self.body_mask
        if self.part is Part.wholebody:
            scale = torch.ones_like(w[0])
            for g in ("lhand", "rhand"):
                scale[self.layout.groups[g]] = WHOLEBODY_WEIGHTS["hands"][stage]
            if "face" in self.layout.groups:
                scale[self.layout.groups["face"]] = WHOLEBODY_WEIGHTS["face"][stage]
            w = w * scale
        total = (w**2 * res).sum(-1)
        if self.part is Part.wholebody:  # articulation of hands and face, independent of their placement
            for g, key in (("lhand", "hands"), ("rhand", "hands"), ("face", "face")):
                weight = ROOT_RELATIVE_WEIGHT * WHOLEBODY_WEIGHTS[key][stage] ** 2
                if g in self.layout.groups and weight > 0:
                    total = total + weight * self._relative(proj, kp, conf, self.layout.groups[g])
        return total

    @staticmethod
    def _relative(proj: Tensor, kp: Tensor, conf: Tensor, sl: slice) -> Tensor:
        p, k, c = proj[:, sl], kp[:, sl, :2], conf[:, sl]
        res = gmof((p - p[:, :1]) - (k - k[:, :1]), SIGMA_PX).sum(-1)
        c = c * (c[:, :1] > 0)  # relative to the root only where the root was seen
        return (c**2 * res).sum(-1)

    def prior_input(self, params: dict[str, Tensor]) -> Tensor:
        """The prior's vector: the part's segments from the parameters (zeros for ones not fitted)."""
        if self.part is Part.hand:
            return params["hand_pose"]
        n = params["body_pose"].shape[0]
        cols = []
        for key, sl in PARTS[self.part].slices().items():
            width = sl.stop - sl.start
            value = params.get(key)
            cols.append(value[:, :width] if value is not None else params["body_pose"].new_zeros(n, width))
        return torch.cat(cols, -1)

    def pose_loss(self, state: FitState, stage: Stage) -> Tensor:
        w = stage.weights
        out = self.forward(state)
        loss = self.data_term(state, self.project(state, out.joints), int(w["index"]))
        p = state.params
        loss = loss + w["prior"] ** 2 * self.prior(self.prior_input(p))
        # shape penalty once per track: rows sharing betas split it
        share = torch.bincount(state.track, minlength=p["betas"].shape[0]).to(p["betas"].dtype)[state.track]
        loss = loss + w["shape"] ** 2 * p["betas"][state.track].pow(2).sum(-1) / share
        if w.get("angle", 0):
            loss = loss + w["angle"] ** 2 * angle_prior(p["body_pose"])
        if w.get("temporal", 0) and self.neighbours is not None:
            loss = loss + w["temporal"] * self._acceleration(out.joints)
        return loss

    def _acceleration(self, joints: Tensor) -> Tensor:
        """Per row ‖J_next − 2J + J_prev‖ averaged over the core joints; 0 at the ends of a track."""
        assert self.neighbours is not None
        prev, nxt = self.neighbours
        core = joints[:, : 21 if self.part is Part.hand else 22]
        rows = torch.arange(len(prev), device=prev.device)
        acc = temporal_smoothness(torch.stack([core[prev], core, core[nxt]], dim=1), order=2)
        return torch.where((prev != rows) & (nxt != rows), acc, torch.zeros_like(acc))

    # ---- schedules
    def camera_stages(self) -> tuple[Stage, Stage]:
        # spec §7.7/§7.8: 50 × translation (lr 0.1), then 100 × orientation + translation. The official lr 0.1
        # (metres per Adam step) suits its x = y = 0 start; ours starts within a few percent, where steps of
        # 0.1 m would first throw a hand at 0.5 m far off, so translation steps are smaller here.
        n = self.steps
        if self.part is Part.hand:
            return (Stage("translation", max(1, n // 2), {"transl": 0.005}),
                    Stage("orientation", n, {"global_orient": 0.05, "transl": 0.005}))
        return (Stage("translation", max(1, n // 2), {"transl": 0.02}),
                Stage("orientation", n, {"global_orient": 1e-2, "transl": 1e-2}))

    def pose_stages(self) -> list[Stage]:
        n = self.steps
        if self.part is Part.hand:
            w = HAND_WEIGHTS
            lrs = {"hand_pose": 5e-2, "betas": 5e-2, "global_orient": 0.05}
            stages = [Stage(f"hand-{i + 1}", n, lrs, {"index": i, "prior": w["prior"][i], "shape": w["shape"][i]},
                            reset=i == 0, uses_prior=True) for i in range(4)]
            last = {"hand_pose": 5e-2, "betas": 5e-2, "global_orient": 0.01, "transl": 0.002}  # spec 0.01 (see above)
            stages.append(Stage("hand-5", n, last, {"index": 4, "prior": w["prior"][4], "shape": w["shape"][4]},
                                uses_prior=True))
            return stages
        w = BODY_WEIGHTS if self.part is Part.body else WHOLEBODY_WEIGHTS
        lrs = dict.fromkeys(("global_orient", *self.free_keys, "betas"), 1e-2)
        return [Stage(f"body-{i + 1}", n, lrs, {"index": i, "prior": w["prior"][i], "shape": w["shape"][i],
                                                "angle": w["angle"][i]}, reset=i == 0, uses_prior=True)
                for i in range(5)]

    def temporal_stage(self) -> Stage:
        w = HAND_WEIGHTS if self.part is Part.hand else BODY_WEIGHTS
        lrs = dict.fromkeys(("global_orient", *self.free_keys, "betas"), 1e-2)
        lrs["transl"] = 1e-3
        weights = {"index": 4, "prior": w["prior"][4], "shape": w["shape"][4], "temporal": TEMPORAL_WEIGHT}
        if self.part is not Part.hand:
            weights["angle"] = BODY_WEIGHTS["angle"][4]
        return Stage("temporal", self.steps, lrs, weights)

    def reprojection(self, state: FitState) -> tuple[Tensor, Tensor, Tensor]:
        """Per row: the final data term, the mean pixel error over the keypoints used, and the joints."""
        with torch.no_grad():
            joints = self.forward(state).joints
            proj = self.project(state, joints)
            data = self.data_term(state, proj, 4)
            kp = self.kp[state.row]
            used = (kp[..., 2] > 0) & (self.body_mask > 0)
            err = (proj - kp[..., :2]).norm(dim=-1)
            px = (err * used).sum(-1) / used.sum(-1).clamp(min=1)
        return data, px, joints


def side_view(kp: Tensor) -> Tensor:
    """Per person: shoulders too close in the image to tell facing from turned away (spec §7.6 step 2)."""
    ls, rs = kp[:, OP_LSHOULDER], kp[:, OP_RSHOULDER]
    both = (ls[:, 2] > 0) & (rs[:, 2] > 0)
    dist = (ls[:, :2] - rs[:, :2]).norm(dim=-1)
    hips = kp[:, [OP_LHIP, OP_RHIP, OP_MIDHIP]]
    hw = hips[..., 2:]
    hip_c = (hips[..., :2] * hw).sum(1) / hw.sum(1).clamp(min=1e-9)
    torso = torch.where(hw.sum((1, 2)) > 0, ((ls[:, :2] + rs[:, :2]) / 2 - hip_c).norm(dim=-1), torch.zeros_like(dist))
    return both & ((dist < SIDE_VIEW_PX) | (dist < SIDE_VIEW_RATIO * torso))


def facing_away(kp: Tensor) -> Tensor:
    """Per person: left shoulder/hip left of the right ones in the image, i.e. the back is to the camera.

    Gradient descent cannot turn a body half-way round, so the facing is chosen at the start; ambiguous
    (side) views get both facings later.
    """
    total = torch.zeros(kp.shape[0], device=kp.device)
    for left, right in ((OP_LSHOULDER, OP_RSHOULDER), (OP_LHIP, OP_RHIP)):
        seen = (kp[:, left, 2] > 0) & (kp[:, right, 2] > 0)
        total = total + torch.where(seen, kp[:, left, 0] - kp[:, right, 0], torch.zeros_like(total))
    return total < 0


def run_fit(fitter: Fitter, state: FitState, *, temporal: bool = False, hypotheses: bool = True,
            progress: Callable[[int, int], None] | None = None) -> tuple[FitState, dict[str, float]]:
    """All stages on the batch. Returns one row per sample (best hypothesis) and the stage losses."""
    n = len(fitter.batch.focal)
    cam_stages, pose_stages = fitter.camera_stages(), fitter.pose_stages()
    total = sum(s.iters for s in (*cam_stages, *pose_stages)) + (fitter.steps if temporal else 0)
    done, losses = 0, {}

    def cam_loss(params: dict[str, Tensor], stage: Stage, it: int) -> Tensor:
        return fitter.camera_loss(state)

    def pose_loss(params: dict[str, Tensor], stage: Stage, it: int) -> Tensor:
        return fitter.pose_loss(state, stage)

    # camera: translation held near its depth estimate, then orientation (depth re-anchored)
    for stage in cam_stages:
        state.anchor = state.params["transl"][:, 2].detach().clone()
        logs = optimize(state.params, [stage], cam_loss, progress=progress, done=done, total=total)
        done += stage.iters
        losses[f"{stage.name}_loss"] = logs[0].loss
    if hypotheses and len(state.row) > n:  # hands: keep the better of the two palm orientations
        with torch.no_grad():
            win = best_rows(fitter.camera_loss(state), state.row, n)
        state = state.take(win, fitter.shared_shape)
    elif hypotheses and fitter.part is not Part.hand:  # bodies seen from the side: also try turned round
        extra = torch.nonzero(side_view(fitter.kp)[state.row]).flatten()
        if len(extra):
            log.info("%d person(s) seen from the side: fitting both facings, keeping the better", len(extra))
            state = state.take(torch.cat([torch.arange(len(state.row), device=extra.device), extra]),
                               fitter.shared_shape)
            state.params["global_orient"][-len(extra):] = cam.flip_about_up_axis(
                state.params["global_orient"][-len(extra):])
    logs = optimize(state.params, pose_stages, pose_loss, prior=fitter.prior, progress=progress, done=done, total=total)
    done += sum(s.iters for s in pose_stages)
    losses.update({f"{lg.name}_loss": lg.loss for lg in logs})
    if len(state.row) > n:
        data, _, _ = fitter.reprojection(state)
        win = best_rows(data, state.row, n)
        state = state.take(win, fitter.shared_shape)
    if temporal:
        fitter.neighbours = track_neighbours(state.track, fitter.batch.frame[state.row])
        logs = optimize(state.params, [fitter.temporal_stage()], pose_loss, prior=fitter.prior, progress=progress,
                        done=done, total=total)
        losses["temporal_loss"] = logs[0].loss
        fitter.neighbours = None
    return state, losses


def track_neighbours(track: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
    """Previous and next row of each row along its track in frame order (itself at the ends)."""
    order = torch.argsort(track * (int(frame.max()) + 1) + frame)
    t = track[order]
    pos = torch.arange(len(order), device=order.device)
    first = torch.cat([torch.ones(1, dtype=torch.bool, device=t.device), t[1:] != t[:-1]])
    last = torch.cat([t[:-1] != t[1:], torch.ones(1, dtype=torch.bool, device=t.device)])
    prev, nxt = torch.empty_like(order), torch.empty_like(order)
    prev[order] = order[torch.where(first, pos, pos - 1)]
    nxt[order] = order[torch.where(last, pos, pos + 1)]
    return prev, nxt


# ---------------------------------------------------------------- set-up
def _initial_params(part: Part, model: BodyModel, prior: Any, n: int, init: dict[str, Tensor],
                    device: torch.device) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Per-sample starting parameters and the names of the fitted pose parameters.

    Body pose: `--init`, else the prior's mean pose (its normaliser mean), else zeros; hands, jaw and
    expression start at zero (= the mean hand, as flat_hand_mean=False). Orientation and translation are
    set by `_initial_camera` unless --init gives them.
    """
    if part is Part.hand:
        widths = {"hand_pose": 45}
    else:
        widths = {"body_pose": 63}
        if part is Part.wholebody:
            widths.update({"left_hand_pose": 45, "right_hand_pose": 45})
            if int(getattr(model, "num_expression", 0) or 0) > 0:  # a face to fit (SMPL-X; not the mannequin)
                widths.update({"jaw_pose": 3, "expression": int(model.num_expression)})
    params = {k: torch.zeros(n, w, device=device) for k, w in widths.items()}
    if prior is not None and "body_pose" in params:
        mean = getattr(prior, "mean_pose", None)  # baselines
        if mean is None:
            mean = getattr(getattr(prior, "normalizer", None), "mean", None)
        sl = PARTS[prior.part].slices().get("body_pose")
        if mean is not None and sl is not None and mean.shape[-1] >= sl.stop:
            params["body_pose"] += mean[sl].to(device=device, dtype=torch.float32)
    params["global_orient"] = torch.zeros(n, 3, device=device)
    params["transl"] = torch.zeros(n, 3, device=device)
    for key, value in init.items():
        if key in params:
            width = params[key].shape[-1]
            value = value.to(params[key])
            if value.shape[-1] < width:
                value = torch.nn.functional.pad(value, (0, width - value.shape[-1]))
            params[key] = value[:, :width].clone()
    return params, tuple(widths)


def _initial_state(part: Part, model: BodyModel, layout: Layout, batch: Persons, params: dict[str, Tensor],
                   init: dict[str, Tensor], shared_shape: bool) -> FitState:
    """Orientation hypotheses (upright facing the camera for bodies, two palm solutions for hands) and the
    translation from the keypoints (spec §7.6/§7.7 camera init)."""
    n, device = len(batch.focal), batch.kp.device
    kp = batch.kp[:, layout.kp_keep]
    tracks = int(batch.track.max()) + 1
    nb = int(model.num_betas)
    betas = torch.zeros(tracks, nb, device=device)
    if "betas" in init:  # first row of each track
        first = torch.full((tracks,), n, dtype=torch.long, device=device)
        first = first.scatter_reduce(0, batch.track, torch.arange(n, device=device), reduce="amin")
        b = init["betas"][first].to(betas)
        betas[:, : min(nb, b.shape[-1])] = b[:, :nb]
    rows = torch.arange(n, device=device)
    depth = None  # from the torso / palm edges unless the palm plane gives it
    if "global_orient" not in init:
        if part is Part.hand:
            with torch.no_grad():
                rest = model(**{k: v for k, v in params.items() if k not in ("global_orient", "transl")},
                             betas=betas[batch.track], return_vertices=False).joints
            palm = list(HAND_PALM)
            pts = rest[:, layout.model_idx[palm]] - rest[:, layout.model_idx[:1]]
            cands, scale, ok = cam.planar_orientations(pts, kp[:, palm])
            depth = torch.where(ok, batch.focal / scale.clamp(min=1e-6), torch.zeros_like(scale))
            fallback = torch.stack([torch.zeros(n, 3, device=device),
                                    cam.flip_about_up_axis(torch.zeros(n, 3, device=device))], 1)
            cands = torch.where(ok[:, None, None], cands, fallback)
            rows = torch.arange(n, device=device).repeat_interleave(2)
            depth = depth[rows]
            params = {k: v[rows].clone() for k, v in params.items()}
            params["global_orient"] = cands.reshape(-1, 3)
        else:
            params["global_orient"] = cam.camera_orient(n, device=device)
            away = facing_away(kp)
            params["global_orient"][away] = cam.flip_about_up_axis(params["global_orient"][away])
    track = batch.track[rows]
    if not shared_shape:
        betas, track = betas[track], torch.arange(len(rows), device=device)
    state = FitState({**params, "betas": betas}, rows, track, torch.zeros(len(rows), device=device))
    if "transl" not in init:
        with torch.no_grad():
            zero = dict(state.params)
            zero["transl"] = torch.zeros_like(zero["transl"])
            joints = Fitter.forward_params(model, zero, state.track).joints[:, layout.model_idx]
        edges = torch.tensor(HAND_DEPTH_EDGES if part is Part.hand else BODY_DEPTH_EDGES, device=device)
        r = state.row
        limbs = torch.tensor(layout.edges, device=device)
        state.params["transl"] = cam.init_translation(joints, kp[r], edges, batch.focal[r], batch.center[r],
                                                      batch.size[r], depth=depth, fallback_edges=limbs)
    return state


def _load_prior(req: FitImageRequest, device: torch.device) -> Any:
    """The prior object: `prior_model` if given, else the DPoser prior (required for --prior dposer; for
    none/l2 only its mean pose is used, if found)."""
    if req.prior_model is not None:
        part = getattr(req.prior_model, "part", None)
        if part is not None and Part(part) is not req.part:
            raise InputError(f"the given prior is a {Part(part).value} prior, but the fit is --part {req.part.value}")
        return req.prior_model.to(device) if hasattr(req.prior_model, "to") else req.prior_model
    if req.prior == "dposer":
        return DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    try:
        return DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    except DposerError as exc:
        log.info("no prior for the initial mean pose (%s); starting from the zero pose", exc.message)
        return None


def _validate(req: FitImageRequest) -> None:
    if req.part not in FIT_PARTS:
        raise InputError(f"fit-image fits body, hand or wholebody, not --part {req.part.value}")
    if req.prior not in PRIOR_KINDS and req.prior_model is None:
        raise InputError(f"unknown --prior {req.prior!r}{suggest(req.prior, list(PRIOR_KINDS))}",
                         hint="priors: " + ", ".join(PRIOR_KINDS))
    if req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    if req.focal is not None and not req.focal > 0:
        raise InputError(f"--focal must be a positive number of pixels (got {req.focal})")
    if not 0 <= req.conf_threshold < 1:
        raise InputError(f"the confidence threshold must be in [0, 1) (got {req.conf_threshold})")
    _person_filter(req.person)
    from dposer_cli.io.keypoints import KEYPOINT_FORMATS

    if req.keypoint_format not in KEYPOINT_FORMATS:
        raise InputError(f"unknown --keypoint-format {req.keypoint_format!r}"
                         f"{suggest(req.keypoint_format, list(KEYPOINT_FORMATS))}",
                         hint="formats: " + ", ".join(KEYPOINT_FORMATS))


# ---------------------------------------------------------------- the command
def run(req: FitImageRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Fit every person of every image in one batch; write `<stem>.npz` and `<stem>_overlay.png` per image."""
    t0 = time.perf_counter()
    _validate(req)
    frames = resolve_frames(req.images, req.keypoints)
    video = frames[0].sequence >= 0
    if req.temporal and not video:
        raise InputError("--temporal needs a folder of frames (a video), not single images")
    device = resolve_device(req.device)
    out = ensure_out_dir(req.out)
    batch, kp_layout, per_frame = read_persons(frames, req, req.part, device)
    model = load_body("hand" if req.part is Part.hand else "body", req.body_model, device)
    layout = build_layout(req.part, model, kp_layout)
    prior = _load_prior(req, device)
    if prior is not None:
        log.info("%s prior: %s", req.part.value, prior.source)
    init = read_init(req.init, frames, batch)
    params, free_keys = _initial_params(req.part, model, prior, len(batch.focal), init, device)
    state = _initial_state(req.part, model, layout, batch, params, init, shared_shape=video)
    gen = make_generator(req.seed, device)
    fitter = Fitter(req.part, model, layout, batch, req.steps, free_keys, shared_shape=video)
    fitter.prior = PriorTerm(req.prior, prior if req.prior == "dposer" or req.prior_model is not None else None,
                             total_steps=prior_steps(fitter.pose_stages()), generator=gen)
    nfe0 = prior.nfe if prior is not None else 0
    t_fit = time.perf_counter()
    state, losses = run_fit(fitter, state, temporal=req.temporal, hypotheses="global_orient" not in init,
                            progress=progress)
    fit_seconds = time.perf_counter() - t_fit
    nfe = (prior.nfe - nfe0) if prior is not None else 0
    data, px, joints = fitter.reprojection(state)
    outputs, images = _write_outputs(req, out, frames, per_frame, fitter, state, data, px, joints, layout)
    n = len(batch.focal)
    return Result(
        command="fit-image",
        outputs=outputs,
        metrics={"reprojection_error_px": float(px.mean()), "reprojection_loss": float(data.mean()),
                 "fits_per_second": n / max(fit_seconds, 1e-9)},
        info={"part": req.part.value, "prior": req.prior, "checkpoint": prior.source if prior is not None else None,
              "body_model": model.kind, "persons": n, "frames": len(frames), "steps": req.steps, "nfe": nfe,
              "fit_seconds": round(fit_seconds, 4), "prior_seconds": round(fitter.prior.seconds, 4),
              "device": str(device), "seed": req.seed,
              "stage_losses": losses, "images": images},
        seconds=time.perf_counter() - t0,
        lines=[(f"fitted {n} {'hand' if req.part is Part.hand else 'person'}(s) in {len(frames)} image(s) with "
                f"{req.prior} prior in {fit_seconds:.1f} s ({nfe} network evaluations); mean reprojection error "
                f"{float(px.mean()):.1f} px")],
    )


def _write_outputs(req: FitImageRequest, out: Path, frames: list[Frame], per_frame: dict[int, int], fitter: Fitter,
                   state: FitState, data: Tensor, px: Tensor, joints: Tensor, layout: Layout
                   ) -> tuple[dict[str, Path | list[Path]], list[dict]]:
    """One npz (+ overlay) per image that has fitted persons; per-image summary entries."""
    batch = fitter.batch
    core = fitter.model.joint_set("hand21" if req.part is Part.hand else "body22")
    npz_files: list[Path] = []
    overlays: list[Path] = []
    images: list[dict] = []
    frame_of_row = batch.frame[state.row]
    for f_idx, frame in enumerate(frames):
        rows = torch.nonzero(frame_of_row == f_idx).flatten()
        entry: dict = {"image": frame.image, "keypoints": frame.keypoints, "persons": len(rows)}
        if len(rows) == 0:
            images.append(entry)
            continue
        rows = rows[torch.argsort(batch.person[state.row[rows]])]
        arrays = {k: v.detach()[rows].cpu().numpy() for k, v in state.params.items() if k != "betas"}
        arrays["betas"] = state.params["betas"].detach()[state.track[rows]].cpu().numpy()
        samples = state.row[rows]
        arrays.update({
            "focal": batch.focal[samples].cpu().numpy(),
            "center": batch.center[samples].cpu().numpy(),
            "image_size": np.array([frame.height, frame.width]),
            "person_index": batch.person[samples].cpu().numpy(),
            "keypoints": np.stack([batch.raw[int(s)][layout.kp_keep.cpu().numpy()] for s in samples.tolist()]),
            "joints": joints[rows][:, core].cpu().numpy(),
            "reprojection_error_px": px[rows].cpu().numpy(),
            "reprojection_loss": data[rows].cpu().numpy(),
            "part": np.array(req.part.value),
            "body_model": np.array(fitter.model.kind),
            "prior": np.array(req.prior),
        })
        path = out / f"{frame.stem}.npz"
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)
        npz_files.append(path)
        entry.update({"npz": path, "reprojection_error_px": float(px[rows].mean()),
                      "loss": float(data[rows].mean()),
                      "per_person": [{"person": int(p), "reprojection_error_px": float(e), "loss": float(lo)}
                                     for p, e, lo in zip(arrays["person_index"], px[rows], data[rows], strict=True)]})
        if req.overlay:
            entry["overlay"] = _overlay(req, out, frame, fitter, state, rows, arrays["keypoints"], layout)
            overlays.append(entry["overlay"])
        images.append(entry)
    outputs: dict[str, Path | list[Path]] = {"npz": npz_files}
    if overlays:
        outputs["overlays"] = overlays
    return outputs, images


def _overlay(req: FitImageRequest, out: Path, frame: Frame, fitter: Fitter, state: FitState, rows: Tensor,
             keypoints: np.ndarray, layout: Layout) -> Path:
    """Meshes over the photo (camera coordinates = model output: the camera rotation is the identity)."""
    from dposer_cli.io.media import read_image, save_image
    from dposer_cli.render.draw import draw_keypoints, overlay_mesh

    image = read_image(frame.image)
    params = {k: (v[rows] if k != "betas" else v) for k, v in state.params.items()}
    with torch.no_grad():
        verts = Fitter.forward_params(fitter.model, params, state.track[rows], vertices=True).vertices
    samples = state.row[rows]
    focal = float(fitter.batch.focal[samples[0]])
    center = tuple(float(c) for c in fitter.batch.center[samples[0]])
    if verts is not None and fitter.model.faces is not None:
        faces = fitter.model.faces.cpu().numpy()
        image = overlay_mesh(image, [v for v in verts.cpu().numpy()], faces, focal=focal, center=center,
                             alpha=0.7, renderer=req.renderer)
    image = draw_keypoints(image, keypoints, edges=layout.edges, conf_threshold=req.conf_threshold)
    return save_image(out / f"{frame.stem}_overlay.png", image)
