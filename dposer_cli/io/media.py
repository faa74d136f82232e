"""Pictures and videos: PNG/JPEG via Pillow, MP4 via imageio-ffmpeg (its bundled ffmpeg), GIF via Pillow;
video frames are decoded one at a time by the same ffmpeg (`video_info`, `read_video_frames`).

Every write is atomic: a temp file in the destination folder, then `os.replace`, so an interrupted run
never leaves a half-written picture under the final name.
"""

import contextlib
import os
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from jaxtyping import UInt8

from dposer_cli.core import validate
from dposer_cli.core.errors import InputError, UnavailableError
from dposer_cli.core.paths import atomic_write

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
PNG_LEVEL = 3  # zlib level of written PNGs
# zlib strategy of written PNGs: run-length matches only. On our pictures (photo overlays, renders on a flat
# background) 10-35 % faster to encode than the default strategy, files mostly a little smaller (-15 to +19 %)
PNG_STRATEGY = zlib.Z_RLE
VIDEO_SUFFIXES = (".mp4", ".gif")
# formats `read_image` decodes (Pillow's own decoders only: never EPS/PS, which would start Ghostscript)
READ_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF", "PPM")
MACRO_BLOCK = 16  # H.264 / yuv420p wants sizes divisible by 16; we pad instead of letting ffmpeg resize


def _readable(path: Path) -> Path:
    """Give a finished file the usual mode (0666 minus umask): temp files are created 0600."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~mask)
    return path


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4) or 0 in img.shape:
        raise InputError(f"{what}: expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)


def save_image(path: Path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3|4) image as PNG or JPEG (chosen by the suffix) atomically; returns the path.

    Raises:
        InputError: unknown suffix, wrong array, or the folder is not writable.
    """
    from PIL import Image

    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot save image {path}: unknown suffix {path.suffix!r}; use .png, .jpg or .jpeg")
    img = _check_image(image, str(path))
    if fmt == "JPEG":
        img = img[..., :3]  # JPEG has no alpha
    pil = Image.fromarray(img)
    with atomic_write(path) as fh:
        # PNG level 3: a third of the default's (6) encoding time for ~12 % larger files
        options = (
            {"quality": 92} if fmt == "JPEG" else {"compress_level": PNG_LEVEL, "compress_type": PNG_STRATEGY}
        )
        pil.save(fh, format=fmt, **options)
    return _readable(path)


def _pad_frames(frames: np.ndarray, multiple: int) -> np.ndarray:
    """Pad bottom/right by repeating the edge so height and width are multiples of `multiple`."""
    h, w = frames.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Like `atomic_write`, for writers that need a file *name* with the right suffix (ffmpeg)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_video(path: Path, frames: np.ndarray, fps: int | float = 30) -> Path:  # noqa: PYI041 (beartype: int is no float)
    """Write uint8 (T, H, W, 3) frames as .mp4 (H.264, padded to multiples of 16) or .gif, atomically; returns the path.

    GIF stores delays in 1/100 s, and Pillow merges identical consecutive frames into one longer frame.

    Raises:
        InputError: unknown suffix, wrong array, bad fps, or the folder is not writable.
        UnavailableError: ffmpeg could not be started or failed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"cannot save video {path}: unknown suffix {path.suffix!r}; use .mp4 or .gif")
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or 0 in arr.shape:
        raise InputError(
            f"{path}: expected uint8 (T, H, W, 3) frames with T >= 1, got {arr.dtype} {arr.shape}"
        )
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"{path}: fps must be positive, got {fps}")
    fps = float(fps)
    if suffix == ".gif":
        _write_gif(path, arr, fps)
    else:
        _write_mp4(path, _pad_frames(arr, MACRO_BLOCK), fps)
    return _readable(path)


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with atomic_write(path) as fh:
        images[0].save(
            fh, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        )


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise UnavailableError(
            f"cannot write {path}: imageio-ffmpeg is not installed ({exc})", hint="pip install imageio-ffmpeg"
        ) from None
    h, w = frames.shape[1:3]
    with _atomic_path(path) as tmp:
        try:
            writer = imageio_ffmpeg.write_frames(
                str(tmp),
                (w, h),
                fps=float(fps),
                codec="libx264",
                pix_fmt_out="yuv420p",
                quality=7,
                macro_block_size=MACRO_BLOCK,
                ffmpeg_log_level="error",
            )
            writer.send(None)  # start ffmpeg
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
        except (OSError, RuntimeError, ValueError) as exc:
            raise UnavailableError(
                f"ffmpeg failed writing {path}: {_one_line(exc)[:300]}", hint="try a .gif output instead"
            ) from None


def read_image(path: Path) -> UInt8[np.ndarray, "H W 3"]:
    """Read a picture (PNG, JPEG, BMP, TIFF, WebP, GIF, PPM) as uint8 RGB.

    The size is checked from the header before anything is decoded (`core.validate.image_size`).

    Raises:
        InputError: the file is missing, a folder, too large, or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"cannot read image {path}: it is a folder, expected a .png or .jpg file")
    try:
        Image.init()  # register every plugin, so the allow-list below can name them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(path, formats=[f for f in READ_FORMATS if f in Image.OPEN]) as im:
                validate.image_size(str(path), *im.size)
                return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:  # Pillow's own check (same limit) fired first, while opening
        raise InputError(
            f"{path}: image is larger than {validate.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; "
            "refused before decoding",
            hint="downscale the picture (keypoints scale with it)",
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"cannot read image {path}: not a recognised image format (expected {', '.join(READ_FORMATS)})"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {_one_line(exc)[:200]}") from None


# ---------------------------------------------------------------------------------------------------- reading videos
VIDEO_READ_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")  # decoded by imageio-ffmpeg's ffmpeg


@dataclass(frozen=True)
class VideoInfo:
    """What `video_info` finds out about a video file before its frames are decoded."""

    path: Path
    frames: int  # decoded frames (counted by ffmpeg, not the container's estimate)
    fps: float
    width: int
    height: int


def _ffmpeg(path: Path) -> ModuleType:
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise UnavailableError(
            f"cannot read {path}: imageio-ffmpeg is not installed ({exc})", hint="pip install imageio-ffmpeg"
        ) from None
    return imageio_ffmpeg


def _check_video_path(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"video not found: {path}" if not path.exists() else f"cannot read video {path}: not a file"
        )
    return path


def video_info(path: Path) -> VideoInfo:
    """Frame count, frame rate and size of a video (ffmpeg reads the file once, without converting frames).

    Raises:
        InputError: the file is missing, not a video ffmpeg can decode, has no frames, or frames too large.
        UnavailableError: imageio-ffmpeg is not installed.
    """
    path = _check_video_path(path)
    ffmpeg = _ffmpeg(path)
    try:
        reader = ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
        frames = int(ffmpeg.count_frames_and_secs(str(path))[0])
    except (OSError, RuntimeError, ValueError, StopIteration) as exc:
        raise InputError(f"cannot read video {path}: {_one_line(exc)[:200]}") from None
    width, height = (int(v) for v in meta["size"])
    validate.image_size(str(path), width, height)
    fps = float(meta.get("fps") or 0.0)
    if frames < 1:
        raise InputError(f"cannot read video {path}: it holds no frames")
    return VideoInfo(path, frames, fps if np.isfinite(fps) and fps > 0 else 30.0, width, height)


def read_video_frames(path: Path, *, stop: int | None = None) -> Iterator[UInt8[np.ndarray, "H W 3"]]:
    """Decode a video's frames one at a time as uint8 RGB (H, W, 3), the first `stop` of them (all: None).

    Only one frame is held in memory at a time; ffmpeg is stopped when the caller stops iterating.

    Raises:
        InputError: the file is missing or cannot be decoded.
        UnavailableError: imageio-ffmpeg is not installed.
    """
    path = _check_video_path(path)
    ffmpeg = _ffmpeg(path)
    try:
        reader = ffmpeg.read_frames(str(path))
        meta = next(reader)
    except (OSError, RuntimeError, ValueError, StopIteration) as exc:
        raise InputError(f"cannot read video {path}: {_one_line(exc)[:200]}") from None
    width, height = (int(v) for v in meta["size"])
    validate.image_size(str(path), width, height)
    try:
        for index, raw in enumerate(reader):
            if stop is not None and index >= stop:
                break
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: {_one_line(exc)[:200]}") from None
    finally:
        reader.close()
