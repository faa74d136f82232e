"""Readers for the evaluation datasets in their published on-disk layouts (spec §8.3).

Every reader checks the whole layout before anything runs: a missing file is one `InputError` naming
the path that was expected.

    EHF/                           01_img.jpg  01_align.ply  vitpose_keypoints/predictions/01_img.json  (… 100)
    FreiHAND_pub_v2_eval/          evaluation/rgb/00000000.jpg …  evaluation_K.json  evaluation_xyz.json
                                   evaluation_verts.json  [evaluation_mano.json  evaluation_scale.json]
    AMASS-style trees              any folders of *.npz (AMASS `poses`, `pose_body`, our keys, toy files)
    HumanEva clips                 AMASS HumanEva sequences cut into non-overlapping 60-frame fragments
    ARCTIC/                        images/s05/<action>/4/00001.jpg …  meta/misc.json
                                   keypoints/mmpose_keypoints/s05/<action>/4/<frame>.json
                                   processed_verts/seqs/s05/<action>.npy (ARCTIC's process_seqs --export_verts)
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.io.motion import read_motion
from dposer_cli.io.poses import pose_files, read_poses

EHF_KEYPOINTS = Path("vitpose_keypoints") / "predictions"
FREIHAND_SPLIT = "evaluation"
HUMANEVA_SEQ_LEN = 60


def _require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise InputError(f"{what} folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"{root}: is a file; --data-dir must be the {what} folder")
    return root


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what}: missing file {path}")
    return path


# ------------------------------------------------------------------------------------------------------- EHF
@dataclass(frozen=True)
class EHFItem:
    """One EHF frame: the photo, the registered SMPL-X mesh and the ViTPose keypoints."""

    name: str  # "01" … "100"
    image: Path
    mesh: Path
    keypoints: Path


def read_ehf(root: Path, keypoints_dir: Path = EHF_KEYPOINTS) -> list[EHFItem]:
    """The EHF frames in numeric order (`NN_img.jpg` with `NN_align.ply` and `<keypoints_dir>/NN_img.json`).

    Raises:
        InputError: the folder is missing, holds no `NN_img.jpg`, or a frame lacks its mesh or keypoints.
    """
    root = _require_dir(root, "EHF")
    images = [p for p in root.glob("*_img.jpg") if re.fullmatch(r"\d+_img\.jpg", p.name)]
    if not images:
        raise InputError(f"EHF: missing file {root / '01_img.jpg'} (no NN_img.jpg frames in {root})")
    items = []
    for img in sorted(images, key=lambda p: int(p.name.split("_")[0])):
        name = img.name.split("_")[0]
        mesh = _require_file(root / f"{name}_align.ply", "EHF")
        kp = _require_file(root / keypoints_dir / f"{name}_img.json", "EHF")
        items.append(EHFItem(name, img, mesh, kp))
    return items


def read_ply_vertices(path: Path) -> Float[np.ndarray, "V 3"]:
    """Vertex positions (x, y, z) of a PLY mesh or point cloud, ASCII or binary, in file order (trimesh).

    Raises:
        InputError: missing file, not a PLY, no vertex element or no x/y/z properties.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mesh file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head.startswith(b"ply") or b"end_header" not in head:
        raise InputError(f"{path}: not a PLY file (no 'ply' magic / 'end_header')")
    import trimesh  # imported on use (start-up)

    try:
        mesh = trimesh.load(path, file_type="ply", process=False)  # process=False: no merging or reordering
    except KeyError as exc:
        raise InputError(f"{path}: PLY vertices need x, y, z properties (missing {exc})") from None
    except Exception as exc:  # noqa: BLE001 - trimesh reports a malformed file with many exception types
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot read the PLY vertices ({msg})") from None
    vertices = getattr(mesh, "vertices", None)
    if vertices is None or len(vertices) == 0:
        raise InputError(f"{path}: the PLY file has no vertices")
    return np.asarray(vertices, np.float64).reshape(-1, 3)


# -------------------------------------------------------------------------------------------------- FreiHAND
@dataclass
class FreiHANDSet:
    """The FreiHAND evaluation split: images with intrinsics and ground-truth joints / vertices (metres)."""

    images: list[Path]
    K: Float[np.ndarray, "N 3 3"]
    xyz: Float[np.ndarray, "N 21 3"]  # OpenPose hand order (wrist, thumb 1–4, index 1–4, …)
    verts: Float[np.ndarray, "N 778 3"]
    mano: Float[np.ndarray, "N 61"] | None  # pose 48, shape 10, translation 3 (not needed for the metrics)


def read_json_file(path: Path) -> object:
    """A JSON file's content; malformed or unreadable files are one InputError naming the file."""
    return _read_json(Path(path))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _json_array(path: Path, shape: tuple[int, ...], n: int) -> np.ndarray:
    try:
        arr = np.asarray(_read_json(path), dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: expected a list of numeric arrays of shape {shape}") from None
    if arr.ndim == len(shape) + 2 and arr.shape[1] == 1:  # evaluation_mano.json: [[61 values]] per image
        arr = arr[:, 0]
    if arr.shape != (n, *shape):
        raise InputError(
            f"{path}: holds an array of shape {arr.shape}; expected ({n}, "
            f"{', '.join(map(str, shape))}) for the {n} images in the rgb folder"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: contains NaN or infinite values")
    validate.magnitude(arr, str(path), unit="(radians, metres or coefficients)")
    return arr


def read_freihand(root: Path, split: str = FREIHAND_SPLIT) -> FreiHANDSet:
    """FreiHAND_pub_v2(_eval) layout: `<split>/rgb/*.jpg` and `<split>_{K,xyz,verts[,mano]}.json` beside it.

    Raises:
        InputError: a missing folder or file (named), malformed JSON, or array sizes that disagree with
            the number of images.
    """
    root = _require_dir(root, "FreiHAND")
    rgb = root / split / "rgb"
    if not rgb.is_dir():
        raise InputError(f"FreiHAND: missing folder {rgb}")
    images = sorted(rgb.glob("*.jpg"))
    if not images:
        raise InputError(f"FreiHAND: missing file {rgb / '00000000.jpg'} (no .jpg images in {rgb})")
    files = {k: _require_file(root / f"{split}_{k}.json", "FreiHAND") for k in ("K", "xyz", "verts")}
    n = len(images)
    mano_path = root / f"{split}_mano.json"
    return FreiHANDSet(
        images=images,
        K=_json_array(files["K"], (3, 3), n),
        xyz=_json_array(files["xyz"], (21, 3), n),
        verts=_json_array(files["verts"], (778, 3), n),
        mano=_json_array(mano_path, (61,), n) if mano_path.is_file() else None,
    )


# ---------------------------------------------------------------------------------------------------- ARCTIC
ARCTIC_SUBJECT = "s05"  # the official whole-body HMR protocol (spec §8.3): subject s05, camera 4
ARCTIC_VIEW = 4
ARCTIC_EVERY = 20  # frames sorted(jpgs)[1:][19::20]
ARCTIC_KEYPOINTS = Path("keypoints") / "mmpose_keypoints"


@dataclass(frozen=True)
class ArcticItem:
    """One evaluated ARCTIC frame."""

    action: str  # sequence name, e.g. "box_grab_01"
    image: Path
    keypoints: Path  # MMPose COCO-WholeBody JSON of the image
    frame: int  # row in the action's processed vertices: image number − ioi_offset (ARCTIC's convention)


@dataclass(frozen=True)
class ArcticSet:
    items: list[ArcticItem]
    verts: dict[str, Path]  # action → processed_verts/seqs/<subject>/<action>.npy
    intrinsics: Float[np.ndarray, "3 3"]  # meta/misc.json [subject]["intris_mat"][view − 1]
    ioi_offset: int
    subject: str
    view: int


def read_arctic(
    root: Path, subject: str = ARCTIC_SUBJECT, view: int = ARCTIC_VIEW, keypoints_dir: Path = ARCTIC_KEYPOINTS
) -> ArcticSet:
    """The ARCTIC whole-body HMR frames: every action of `subject` seen by camera `view`, frames
    `sorted(jpgs)[1:][19::20]`, each with its keypoint file; the processed vertex file of each action.

    Raises:
        InputError: a missing folder or file (named), malformed misc.json, or a non-numeric image name.
    """
    root = _require_dir(root, "ARCTIC")
    misc_path = _require_file(root / "meta" / "misc.json", "ARCTIC")
    misc = _read_json(misc_path)
    try:
        entry = misc[subject]  # type: ignore[index]
        offset = int(entry["ioi_offset"])
        intrinsics = np.asarray(entry["intris_mat"][view - 1], dtype=np.float64)
    except (KeyError, IndexError, TypeError, ValueError):
        raise InputError(
            f"{misc_path}: expected {subject}.ioi_offset and {subject}.intris_mat (one 3x3 matrix "
            f"per camera 1–8)"
        ) from None
    if intrinsics.shape != (3, 3) or not np.isfinite(intrinsics).all():
        raise InputError(f"{misc_path}: {subject}.intris_mat[{view - 1}] is not a finite 3x3 matrix")
    subject_dir = root / "images" / subject
    if not subject_dir.is_dir():
        raise InputError(f"ARCTIC: missing folder {subject_dir}")
    actions = sorted(d.name for d in subject_dir.iterdir() if (d / str(view)).is_dir())
    if not actions:
        raise InputError(
            f"ARCTIC: missing folder {subject_dir / '<action>' / str(view)} (no action seen by "
            f"camera {view} in {subject_dir})"
        )
    items, verts = [], {}
    for action in actions:
        jpgs = sorted((subject_dir / action / str(view)).glob("*.jpg"))
        chosen = jpgs[1:][ARCTIC_EVERY - 1 :: ARCTIC_EVERY]
        if not chosen:
            continue
        verts[action] = _require_file(root / "processed_verts" / "seqs" / subject / f"{action}.npy", "ARCTIC")
        for img in chosen:
            if not img.stem.isdigit():
                raise InputError(
                    f"ARCTIC: image name {img.name} is not a frame number (expected e.g. 00020.jpg)"
                )
            kp = _require_file(
                root / keypoints_dir / subject / action / str(view) / f"{img.stem}.json", "ARCTIC"
            )
            items.append(ArcticItem(action, img, kp, int(img.stem) - offset))
    if not items:
        raise InputError(
            f"ARCTIC: fewer than {ARCTIC_EVERY + 1} images per action in {subject_dir}; nothing to evaluate"
        )
    return ArcticSet(items, verts, intrinsics, offset, subject, view)


# ------------------------------------------------------------------------------------------ AMASS-style trees
def read_amass_poses(root: Path, part: Part, *, stride: int = 1) -> Float[np.ndarray, "N D"]:
    """Every npz under `root` (sorted, recursive) as part vectors, keeping every `stride`-th frame per file.

    Raises:
        InputError: missing folder, no .npz files, or an invalid file (named).
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"pose data not found: {root}")
    if stride < 1:
        raise InputError(f"the frame stride must be at least 1 (got {stride})")
    arrays = [read_poses(f, part).poses[::stride] for f in pose_files([root])]
    return np.concatenate(arrays, axis=0).astype(np.float32)


@dataclass(frozen=True)
class Clip:
    """A fixed-length motion fragment cut from a sequence."""

    source: Path
    start: int  # first frame in the source sequence
    body_pose: Float[np.ndarray, "T 63"]
    global_orient: Float[np.ndarray, "T 3"] | None


def humaneva_clips(root: Path, seq_len: int = HUMANEVA_SEQ_LEN, *, fps: float | None = None) -> list[Clip]:
    """Non-overlapping `seq_len`-frame fragments of every motion npz under `root` (remainders dropped),
    as the official `HumanEva.py --seq-len 60` builds the denoising test set.

    Raises:
        InputError: missing folder, no .npz, an invalid motion file, or no sequence long enough for one clip.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"motion data not found: {root}")
    if seq_len < 2:
        raise InputError(f"clips need at least 2 frames (got {seq_len})")
    clips: list[Clip] = []
    for f in pose_files([root]):
        motion = read_motion(f, fps=fps)
        if motion.body_pose is None:
            raise InputError(f"{f}: holds joints only; HumanEva clips need body poses (pose_body / poses)")
        for start in range(0, motion.num_frames - seq_len + 1, seq_len):
            sl = slice(start, start + seq_len)
            orient = motion.global_orient[sl] if motion.global_orient is not None else None
            clips.append(Clip(f, start, motion.body_pose[sl], orient))
    if not clips:
        raise InputError(f"{root}: no motion has {seq_len} frames; nothing to cut into clips")
    return clips
