"""Keypoints for frames that have no keypoint file: detect them (`io.detect`, MediaPipe Holistic: the most
prominent person), save them as COCO-WholeBody JSON and point the frames at the files, which are then read
like any other keypoint file (`io.frames.read_persons`).

Where a detection is saved: `--save-keypoints` (a .json for one image, else a folder), else the output
folder — `<stem>.keypoints.json` beside an image's outputs, `keypoints/<frame>.json` for video frames (one
sub-folder per video when there are several), so `--keypoints` reads them back on a later run.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dposer_cli.core.errors import InputError, UnavailableError
from dposer_cli.io.detect import DETECT_HINT, DETECTOR, Detector, write_coco_wholebody
from dposer_cli.io.frames import Frame, frame_images
from dposer_cli.io.keypoints import Keypoints2D

log = logging.getLogger(__name__)


def no_keypoints(frame: Frame) -> str:
    """ "no keypoints for …" naming the frame and where keypoint files were looked for."""
    if frame.video_frame >= 0:
        return f"no keypoints for frame {frame.video_frame} of {frame.image}"
    return f"no keypoints for {frame.image} (looked for {', '.join(map(str, frame.searched))})"


def keypoint_file(
    frame: Frame, out: Path, save_keypoints: Path | None, *, detected: int, sequences: int
) -> Path:
    """Where the detection of `frame` is saved (module docstring); `detected` frames are detected in all, of
    `sequences` videos.

    Raises:
        InputError: `save_keypoints` names one .json file but several images are detected.
    """
    name = (frame.stem if frame.video_frame >= 0 else frame.image.stem) + ".json"
    target = save_keypoints
    if frame.sequence < 0:
        if target is None:
            return out / f"{frame.stem}.keypoints.json"
        if target.suffix.lower() == ".json":
            if detected > 1:
                raise InputError(
                    f"--save-keypoints {target} names one file, but keypoints are detected for "
                    f"{detected} images",
                    hint="give a folder",
                )
            return target
        return target / name
    folder = target if target is not None else out / "keypoints"
    if sequences > 1:  # one folder per video
        folder = folder / (frame.image.stem if frame.video_frame >= 0 else frame.image.parent.name)
    return folder / name


def detect_missing(
    frames: Sequence[Frame], out: Path, *, save_keypoints: Path | None = None, hand: bool = False
) -> list[Path]:
    """Detect the keypoints of the frames that have none, write them (see `keypoint_file`) and set each such
    frame's `keypoints` to its file; returns the files written. A video frame without a person gets an
    empty file (`read_persons` skips the frame).

    Raises:
        InputError: a hand fit (detection finds whole bodies, not hand crops), the detect extra is missing,
            or no person is found in a single image.
    """
    missing = [f for f in frames if f.keypoints is None]
    if not missing:
        return []
    if hand:
        raise InputError(
            f"{no_keypoints(missing[0])}; detection finds whole-body keypoints, not hand crops",
            hint="pass --keypoints (MMPose hand JSON), or fit the whole body with --part wholebody",
        )
    sequences = len({f.sequence for f in frames})
    written: list[Path] = []
    try:
        detector = Detector()
    except UnavailableError as exc:  # the detect extra is missing: say both ways out, on one line
        raise InputError(f"{no_keypoints(missing[0])}, and {exc.message}", hint=DETECT_HINT) from None
    with detector:  # one MediaPipe graph for every frame (building one costs more than a detection)
        for frame, image in frame_images(missing):
            try:
                found = detector(image, path=frame.image)
            except InputError:
                if frame.sequence < 0:
                    raise InputError(
                        f"{no_keypoints(frame)}, and MediaPipe found no person in it",
                        hint="pass --keypoints from another detector",
                    ) from None
                found = Keypoints2D(
                    np.zeros((0, 135, 3), np.float32), "openpose135", DETECTOR, None, frame.image
                )
            path = keypoint_file(frame, out, save_keypoints, detected=len(missing), sequences=sequences)
            frame.keypoints = write_coco_wholebody(path, found, image_size=image.shape[:2])
            written.append(frame.keypoints)
    log.info("detected keypoints in %d image(s) with MediaPipe", len(written))
    return written
