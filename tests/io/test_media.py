"""Saving pictures and videos atomically, and reading pictures with one-line errors."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dposer_cli.core.errors import InputError, UnavailableError
from dposer_cli.io import media


def _frames(t: int = 5, h: int = 40, w: int = 56) -> np.ndarray:
    """Distinct frames: a bright square moving across a dark background."""
    out = np.full((t, h, w, 3), 30, np.uint8)
    for i in range(t):
        out[i, 10:30, 4 + 8 * i : 16 + 8 * i] = (240, 200, 40)
    return out


def _no_temp_files(folder) -> bool:
    return all(not p.name.startswith(".") for p in folder.iterdir())


def test_png_round_trips_exactly(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    out = media.save_image(tmp_path / "sub" / "pic.png", img)
    assert out == tmp_path / "sub" / "pic.png"
    np.testing.assert_array_equal(media.read_image(out), img)
    assert _no_temp_files(out.parent)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's private 0600


def test_jpeg_is_chosen_by_suffix(tmp_path):
    img = np.full((32, 32, 3), (200, 100, 50), np.uint8)
    out = media.save_image(tmp_path / "pic.JPG", img)
    assert Image.open(out).format == "JPEG"
    assert np.abs(media.read_image(out).astype(int) - img).max() < 8


def test_save_image_rejects_unknown_suffix_and_bad_arrays(tmp_path):
    with pytest.raises(InputError, match="unknown suffix '.bmp'"):
        media.save_image(tmp_path / "pic.bmp", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        media.save_image(tmp_path / "pic.png", np.zeros((4, 4, 3)))
    assert list(tmp_path.iterdir()) == []


def test_mp4_has_every_frame_and_is_padded_to_16(tmp_path):
    import imageio_ffmpeg

    frames = _frames(7, 40, 56)
    out = media.save_video(tmp_path / "clip.mp4", frames, fps=10)
    n, secs = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert n == 7 and secs == pytest.approx(0.7, abs=0.11)
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert tuple(meta["size"]) == (64, 48)
    first = np.frombuffer(next(reader), np.uint8).reshape(48, 64, 3)
    reader.close()
    assert np.abs(first[:40, :56].astype(int) - frames[0]).mean() < 6  # content, not a blank
    assert _no_temp_files(tmp_path)


def test_gif_has_every_frame_and_the_frame_rate(tmp_path):
    out = media.save_video(tmp_path / "clip.gif", _frames(6), fps=20)
    with Image.open(out) as gif:
        assert gif.n_frames == 6 and gif.size == (56, 40)
        assert gif.info["duration"] == 50
    assert _no_temp_files(tmp_path)


def test_save_video_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown suffix '.avi'"):
        media.save_video(tmp_path / "clip.avi", _frames())
    with pytest.raises(InputError, match=r"\(T, H, W, 3\)"):
        media.save_video(tmp_path / "clip.mp4", _frames()[0])
    with pytest.raises(InputError, match="fps"):
        media.save_video(tmp_path / "clip.gif", _frames(), fps=0)
    assert list(tmp_path.iterdir()) == []


def test_failed_encode_leaves_nothing_behind(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")  # ffmpeg got as far as creating the file
        raise RuntimeError("encoder exploded\nwith details")

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken)
    (tmp_path / "clip.mp4").write_bytes(b"old")
    with pytest.raises(UnavailableError) as err:
        media.save_video(tmp_path / "clip.mp4", _frames())
    assert "\n" not in str(err.value) and "encoder exploded" in str(err.value)
    assert (tmp_path / "clip.mp4").read_bytes() == b"old"  # the previous file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_read_image_errors_are_one_line_and_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    for name in ("missing.png", "junk.png", "truncated.png", ""):
        with pytest.raises(InputError) as err:
            media.read_image(tmp_path / name)
        msg = str(err.value)
        assert "\n" not in msg and str(tmp_path / name) in msg


def test_read_image_converts_grey_and_alpha_to_rgb(tmp_path):
    Image.new("LA", (5, 4), (90, 10)).save(tmp_path / "g.png")
    img = media.read_image(tmp_path / "g.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8 and (img == 90).all()
