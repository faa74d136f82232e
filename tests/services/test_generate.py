"""services.generate: the same samples with or without the process video; process.mp4 per part."""

import imageio.v2 as imageio
import numpy as np
import pytest

from dposer_cli.core.parts import Part
from dposer_cli.render.process import video_timing
from dposer_cli.services import generate as svc
from tests._fixtures.priors import write_tiny_prior


def read_video(path):
    with imageio.get_reader(str(path)) as reader:
        return np.stack([frame for frame in reader])  # list(reader) trips over its nframes = inf


def request(tmp_path, part, **kw):
    ckpt = write_tiny_prior(tmp_path / f"{part.value}.pt", part)
    args = {"part": part, "n": 2, "steps": 2, "out": tmp_path / "o", "checkpoint": ckpt, "device": "cpu",
            "render": False, "renderer": "soft"}
    return svc.GenerateRequest(**{**args, **kw})


@pytest.mark.parametrize("part", [Part.body, Part.hand, Part.wholebody])
def test_process_video_per_part(tmp_path, part):
    plain = svc.run(request(tmp_path, part, out=tmp_path / "plain"))
    res = svc.run(request(tmp_path, part, process_video=True))
    a, b = np.load(plain.outputs["poses"]), np.load(res.outputs["poses"])
    for key in a.files:  # recording the trajectory changes no sample
        np.testing.assert_array_equal(a[key], b[key])
    assert "process_video" not in plain.outputs
    frames = read_video(res.outputs["process_video"])
    fps, hold = video_timing(3)  # 2 steps + the result
    cell = min(256, max(128, 1280 // 2))
    height = max(18, cell // 7) + 2 * cell
    assert frames.shape == (3 + hold, -(-height // 16) * 16, 2 * cell, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5  # noise → pose


def test_face_without_flame_says_so_and_still_writes_poses(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(tmp_path / "no_models"))
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "no_cache"))
    res = svc.run(request(tmp_path, Part.face, process_video=True))
    assert "process_video" not in res.outputs and res.outputs["poses"].is_file()
    assert any("no process video for --part face" in line and "FLAME" in line for line in res.lines)
