"""The file side of fitting to pictures: image ↔ keypoint-file pairing, the persons of each frame as arrays,
starting parameters from `--init` npz files (finite, of the fit's widths), the pictures of the frames
(`frame_images`) and, for videos, one track per person with its output name (`video_tracks`).

Images are single files, folders of video frames (sorted by name) or video files (decoded one frame at a
time, `io.media.read_video_frames`); keypoints are found beside each image, in `predictions/` next to an
`images/` folder (the official examples' layout), or given explicitly (for a video: a folder with one JSON
per frame, in name order). With `missing_ok` a frame without keypoints gets `keypoints=None` (the caller
detects them) instead of an error.
"""

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError
from dposer_cli.io.keypoints import read_keypoints
from dposer_cli.io.media import VIDEO_READ_SUFFIXES, read_image, read_video_frames, video_info
from dposer_cli.io.poses import holds_pickle, open_npz, unsafe_data

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
INIT_KEYS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "hand_pose", "jaw_pose",
             "expression", "betas", "transl")  # fmt: skip


@dataclass
class Frame:
    """One picture and its keypoints."""

    image: Path  # the picture, or the video file holding frame `video_frame`
    keypoints: Path | None  # None: none found (`resolve_frames(missing_ok=True)`), to be detected
    stem: str
    sequence: int  # folder / video index in video mode, -1 for single images
    height: int = 0
    width: int = 0
    video_frame: int = -1  # frame index inside the video file `image`, -1 for picture files
    searched: tuple[Path, ...] = ()  # where keypoints were looked for when none were found
    fps: float | None = None  # the video file's frame rate


@dataclass
class FramePersons:
    """The persons of all frames, one row each (numpy)."""

    keypoints: np.ndarray  # (B, K, 3) float32 as read: x px, y px, confidence
    image_size: np.ndarray  # (B, 2) (H, W) of the row's image
    frame: np.ndarray  # (B,) int64 index into the frames
    person: np.ndarray  # (B,) int64 index of the person in its keypoint file
    track: np.ndarray  # (B,) int64: per row in images; per person index along a video's frames
    layout: str  # keypoint layout ("openpose135" | "hand21")
    per_frame: dict[int, int]  # frame index → persons kept


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


def is_video(path: Path) -> bool:
    """A video file (by its suffix) that `resolve_frames` decodes into frames."""
    return Path(path).suffix.lower() in VIDEO_READ_SUFFIXES and Path(path).is_file()


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file())


def _video_frames(
    video: Path, kp_dir: Path | None, sequence: int, prefix: str, max_frames: int | None
) -> list[Frame]:
    info = video_info(video)
    count = info.frames if max_frames is None else min(info.frames, max_frames)
    files: list[Path | None] = [None] * count
    if kp_dir is not None:
        found = _json_files(kp_dir)
        if len(found) < count:
            raise InputError(
                f"{kp_dir} holds {len(found)} keypoint file(s) for {count} frame(s) of {video}; "
                "give one JSON per frame (taken in name order)"
            )
        files = list(found[:count])
    return [
        Frame(video, kp, f"{prefix}{i:06d}", sequence, info.height, info.width, video_frame=i, fps=info.fps)
        for i, kp in enumerate(files)
    ]


def resolve_frames(
    images: Sequence[Path],
    keypoints: Sequence[Path],
    *,
    missing_ok: bool = False,
    max_frames: int | None = None,
) -> list[Frame]:
    """Pair images (or folders of frames, or video files) with keypoint files.

    Args:
        images: image files, or folders of frames / video files (one sequence each).
        keypoints: one keypoint file per image, or one keypoint folder per sequence; empty: look beside
            each image (video files: none, their keypoints are detected).
        missing_ok: a frame without keypoints gets `keypoints=None` (and `searched`) instead of an error.
        max_frames: keep only the first frames of each sequence.

    Raises:
        InputError: no images, missing files, a count mismatch or a keypoint file that cannot be found.
    """
    if not images:
        raise InputError(
            "no images given", hint="dposer fit-image photo.jpg --keypoints photo.json --out fits/"
        )
    frames: list[Frame] = []
    folders = [Path(p) for p in images if Path(p).is_dir() or is_video(Path(p))]
    if folders and len(folders) != len(images):
        raise InputError("give either image files or folders of frames / videos, not both")
    if folders:
        kp_dirs: list[Path | None]
        if keypoints:
            if len(keypoints) != len(folders) or not all(Path(k).is_dir() for k in keypoints):
                raise InputError(
                    f"{len(folders)} frame folder(s) / video(s) need as many keypoint folders with --keypoints "
                    f"(got {len(keypoints)})"
                )
            kp_dirs = [Path(k) for k in keypoints]
        else:
            kp_dirs = [None] * len(folders)
        for s, (folder, kp_dir) in enumerate(zip(folders, kp_dirs, strict=True)):
            if is_video(folder):
                frames += _video_frames(folder, kp_dir, s, f"{folder.stem}_", max_frames)
                continue
            files = _image_files(folder)
            if not files:
                raise InputError(f"frame folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for img in files[:max_frames]:
                found, tried = _keypoints_beside(img, kp_dir)
                if found is None and not missing_ok:
                    raise InputError(
                        f"no keypoints for frame {img} (looked for {', '.join(map(str, tried))})",
                        hint="pass the keypoint folder with --keypoints",
                    )
                # several videos: the folder name keeps the stems apart
                stem = img.stem if len(folders) == 1 else f"{folder.name}_{img.stem}"
                frames.append(Frame(img, found, stem, s, searched=tuple(tried) if found is None else ()))
        return frames
    if keypoints and len(keypoints) != len(images):
        raise InputError(
            f"{len(images)} image(s) but {len(keypoints)} keypoint file(s); give one --keypoints per image"
        )
    for i, img in enumerate(images):
        img = Path(img)
        if not img.exists():
            raise InputError(f"image not found: {img}")
        tried = []
        kp: Path | None
        if keypoints:
            kp = Path(keypoints[i])
            if kp.is_dir():
                raise InputError(
                    f"--keypoints {kp}: is a folder; for a photo give its keypoints .json file "
                    "(a keypoint folder goes with a folder of frames or a video)"
                )
            if not kp.is_file():
                raise InputError(f"keypoint file not found: {kp}")
        else:
            kp, tried = _keypoints_beside(img, None)
            if kp is None and not missing_ok:
                raise InputError(
                    f"no keypoints for {img} (looked for {', '.join(map(str, tried))})",
                    hint="pass --keypoints KP.json (OpenPose, ViTPose/COCO-WholeBody or MMPose JSON)",
                )
        frames.append(Frame(img, kp, img.stem, -1, searched=tuple(tried) if kp is None else ()))
    stems = [f.stem for f in frames]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise InputError(f"two images share the name {dup!r}; their outputs would overwrite each other")
    return frames


def parse_person(spec: str) -> int | None:
    """`--person`: "all" → None, else a person index ≥ 0.

    Raises:
        InputError: anything else.
    """
    if spec == "all":
        return None
    try:
        index = int(spec)
    except ValueError:
        raise InputError(f"--person must be 'all' or a person index (0, 1, ...), got {spec!r}") from None
    if index < 0:
        raise InputError(f"--person must be 'all' or a person index ≥ 0, got {index}")
    return index


def read_persons(
    frames: list[Frame],
    *,
    keypoint_format: str = "auto",
    part: str = "body",
    person: int | None = None,
    conf_threshold: float = 0.2,
    min_keypoints: int = 4,
    counted_keypoints: int | None = None,
) -> FramePersons:
    """Read every keypoint file and image size (set on the frames), select persons, stack the rows.

    A person needs `min_keypoints` keypoints with confidence ≥ `conf_threshold` among the first
    `counted_keypoints` (all when None); others are skipped with a warning, or rejected where they were
    asked for (`person`) or are the only person of a single image. Video frames without detections are
    skipped.

    Raises:
        InputError: unreadable files, a missing person index, no usable person, mixed keypoint layouts.
    """
    video = frames[0].sequence >= 0
    kps: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    frame_ids: list[int] = []
    person_ids: list[int] = []
    tracks: list[tuple[int, int]] = []
    layouts = set()
    per_frame: dict[int, int] = {}
    for f_idx, frame in enumerate(frames):
        if frame.video_frame < 0:  # video frames: the size is the video's
            image = read_image(frame.image)
            frame.height, frame.width = int(image.shape[0]), int(image.shape[1])
            del image
        if frame.keypoints is None:
            raise InputError(
                f"no keypoints for {frame.image} (looked for {', '.join(map(str, frame.searched))})"
            )
        try:
            read = read_keypoints(frame.keypoints, keypoint_format, part=part)
        except InputError as exc:
            # a video frame without detections is normal: skip it (format errors still stop the run)
            if video and ("no persons found" in exc.message or "confidence 0" in exc.message):
                log.warning(
                    "frame %s skipped: %s",
                    frame.stem if frame.video_frame >= 0 else frame.image.name,
                    # the file's name is enough here (detections sit in the run's staging folder until it ends)
                    exc.message.replace(str(frame.keypoints), frame.keypoints.name),
                )
                per_frame[f_idx] = 0
                continue
            raise
        layouts.add(read.layout)
        arr = np.asarray(read.keypoints, dtype=np.float32)
        rows = range(arr.shape[0]) if person is None else [person]
        if person is not None and person >= arr.shape[0]:
            raise InputError(
                f"--person {person}: {frame.keypoints} has only {arr.shape[0]} person(s) "
                f"(0..{arr.shape[0] - 1})"
            )
        n_here = 0
        for p in rows:
            used = arr[p, :counted_keypoints]
            usable = int((used[:, 2] >= conf_threshold).sum())
            if usable < min_keypoints:
                if person is not None or (arr.shape[0] == 1 and not video):
                    raise InputError(
                        f"{frame.keypoints}: person {p} has {usable} keypoint(s) with confidence ≥ "
                        f"{conf_threshold} (all-zero or too low); at least {min_keypoints} are needed"
                    )
                log.warning("%s: person %d skipped (%d confident keypoints)", frame.keypoints.name, p, usable)
                continue
            kps.append(arr[p])
            sizes.append((frame.height, frame.width))
            frame_ids.append(f_idx)
            person_ids.append(p)
            tracks.append((frame.sequence, p) if video else (-1, len(tracks)))
            n_here += 1
        if n_here == 0 and not video:
            raise InputError(
                f"{frame.keypoints}: no person has at least {min_keypoints} keypoints with confidence ≥ "
                f"{conf_threshold}"
            )
        per_frame[f_idx] = n_here
    if not kps:
        raise InputError("no person with usable keypoints in any frame")
    if len(layouts) > 1:
        raise InputError(
            f"the keypoint files mix layouts ({', '.join(sorted(layouts))}); fit them separately"
        )
    track_ids = {t: i for i, t in enumerate(dict.fromkeys(tracks))}
    return FramePersons(
        keypoints=np.stack(kps),
        image_size=np.array(sizes, dtype=np.int64),
        frame=np.array(frame_ids, dtype=np.int64),
        person=np.array(person_ids, dtype=np.int64),
        track=np.array([track_ids[t] for t in tracks], dtype=np.int64),
        layout=layouts.pop(),
        per_frame=per_frame,
    )


def read_init(
    paths: Sequence[Path],
    num_frames: int,
    frame: np.ndarray,
    person: np.ndarray,
    *,
    widths: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Starting parameters from `--init` npz files (one per frame, rows = persons of its keypoint file).

    Returns one row per (frame[i], person[i]) pair, float32. A file's `person_index` array (as fit-image
    writes) maps its rows to persons; without one, row p is person p. `widths` (key → values per person)
    are checked: the fit pads or cuts nothing.

    Raises:
        InputError: a count mismatch, an unreadable file, a file without parameters, NaN or infinite values,
            a key of the wrong width or a missing person row.
        UnsafeFileError: an array that holds pickled Python objects (refused unread).
    """
    if not paths:
        return {}
    if len(paths) != num_frames:
        raise InputError(f"{num_frames} image(s) but {len(paths)} --init file(s); give one per image")
    tables: list[dict[str, np.ndarray]] = []
    for path in paths:
        path = Path(path)
        with open_npz(path, "--init file") as data:
            table = {
                k: np.asarray(_init_array(data, k, path), dtype=np.float32)
                for k in data.files
                if k in INIT_KEYS
            }
            if "person_index" in data.files:
                table["person_index"] = np.asarray(_init_array(data, "person_index", path)).astype(np.int64)
        if not any(k in table for k in INIT_KEYS):
            raise InputError(f"--init file {path} has none of the keys {', '.join(INIT_KEYS)}")
        for k, arr in table.items():
            if k == "person_index":
                continue
            table[k] = arr = arr.reshape(1, -1) if arr.ndim <= 1 else arr.reshape(arr.shape[0], -1)
            if not np.isfinite(arr).all():
                raise InputError(f"--init file {path}: {k!r} holds NaN or infinite values")
            validate.magnitude(arr, f"--init file {path}: {k!r}", unit="(radians, metres or coefficients)")
            check_init_width(k, arr.shape[-1], (widths or {}).get(k), where=f"--init file {path}")
        tables.append(table)
    out: dict[str, list[np.ndarray]] = {}
    used: list[set[int]] = [set() for _ in tables]
    for f_idx, p in zip(frame.tolist(), person.tolist(), strict=True):
        table = tables[f_idx]
        index = table.get("person_index")
        row = p if index is None else int(np.flatnonzero(index == p)[0]) if (index == p).any() else -1
        used[f_idx].add(row)
        for k, arr in table.items():
            if k == "person_index":
                continue
            if row < 0 or row >= arr.shape[0]:
                raise InputError(
                    f"--init file {paths[f_idx]}: no row for person {p} in {k!r} ({arr.shape[0]} rows)"
                )
            out.setdefault(k, []).append(arr[row])
    for path, table, rows in zip(paths, tables, used):
        count = max(arr.shape[0] for k, arr in table.items() if k != "person_index")
        unused = sorted(set(range(count)) - rows)
        if unused:  # a file for other persons (or another frame) would start the fit from the wrong pose
            log.warning(
                "--init file %s: row%s %s start%s no fitted person (%d of its %d rows used)",
                path,
                "s" if len(unused) > 1 else "",
                _rows_text(unused),
                "" if len(unused) > 1 else "s",
                count - len(unused),
                count,
            )
    return {k: np.stack(v) for k, v in out.items()}


def _rows_text(rows: Sequence[int]) -> str:
    """0-based row numbers, the first few: "1, 2, 3" or "1, 2, 3, 4, … (9 rows)"."""
    head = ", ".join(str(r) for r in rows[:4])
    return head if len(rows) <= 4 else f"{head}, … ({len(rows)} rows)"


def _init_array(data: "np.lib.npyio.NpzFile", key: str, path: Path) -> np.ndarray:
    """One array of an `--init` file; one of pickled Python objects is refused unread.

    Raises:
        UnsafeFileError: the array holds pickled Python objects.
    """
    try:
        return data[key]
    except ValueError as exc:
        if holds_pickle(exc):
            raise unsafe_data(path, key) from None
        raise InputError(
            f"--init file {path}: {key} is not readable ({str(exc).splitlines()[0][:200]})"
        ) from None


def check_init_width(key: str, found: int, expected: int | None, *, where: str = "--init") -> None:
    """Refuse starting parameters of the wrong width (`expected` None: the key is not checked).

    Raises:
        InputError: "WHERE: 'KEY' has N values per person; the fit takes M".
    """
    if expected is not None and found != expected:
        raise InputError(f"{where}: {key!r} has {found} values per person; the fit takes {expected}")


def frame_images(frames: Sequence[Frame]) -> Iterator[tuple[Frame, np.ndarray]]:
    """The pictures of `frames`: files read, video files decoded once each (in frame order)."""
    videos: dict[Path, dict[int, Frame]] = {}
    for frame in frames:
        if frame.video_frame >= 0:
            videos.setdefault(frame.image, {})[frame.video_frame] = frame
        else:
            yield frame, read_image(frame.image)
    for path, wanted in videos.items():
        for index, image in enumerate(read_video_frames(path, stop=max(wanted) + 1)):
            if index in wanted:
                yield wanted[index], image


# ---------------------------------------------------------------- videos: one track per person and video
@dataclass(frozen=True)
class VideoTrack:
    """One person along one video: the batch rows (`FramePersons` rows) in frame order and output names."""

    name: str  # file stem: motion, motion_person1, <video>_motion, ...
    sequence: int
    rows: np.ndarray  # (T,) int64
    fps: float  # the video's frame rate (30 for frame folders)
    frame_index: np.ndarray  # (T,) each row's frame number in its video
    person_index: np.ndarray  # (T,) the person's index in its keypoint files


def video_prefix(frames: Sequence[Frame], sequence: int) -> str:
    """ "" for one video, else "<video or folder name>_" (file names of several videos stay apart)."""
    if len({f.sequence for f in frames}) == 1:
        return ""
    frame = next(f for f in frames if f.sequence == sequence)
    return (frame.image.stem if frame.video_frame >= 0 else frame.image.parent.name) + "_"


def frame_numbers(frames: Sequence[Frame]) -> np.ndarray:
    """Each frame's number in its video: the decoded frame index, or the position in its folder."""
    seen: dict[int, int] = {}
    numbers = []
    for f in frames:
        seen[f.sequence] = seen.get(f.sequence, -1) + 1
        numbers.append(f.video_frame if f.video_frame >= 0 else seen[f.sequence])
    return np.array(numbers, dtype=np.int64)


def video_tracks(persons: FramePersons, frames: Sequence[Frame]) -> list[VideoTrack]:
    """The tracks of a video batch in track order, rows sorted by frame, named for their motion files."""
    numbers = frame_numbers(frames)
    tracks = []
    for track in np.unique(persons.track):
        rows = np.flatnonzero(persons.track == track)
        rows = rows[np.argsort(persons.frame[rows], kind="stable")]
        first = frames[int(persons.frame[rows[0]])]
        seq = first.sequence
        people = {
            int(p)
            for p, f in zip(persons.person, persons.frame, strict=True)
            if frames[int(f)].sequence == seq
        }
        name = f"{video_prefix(frames, seq)}motion" + (
            f"_person{int(persons.person[rows[0]])}" if len(people) > 1 else ""
        )
        tracks.append(
            VideoTrack(name, seq, rows, first.fps or 30.0, numbers[persons.frame[rows]], persons.person[rows])
        )
    return tracks
