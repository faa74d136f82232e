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
    args = {
        "part": part,
        "n": 2,
        "steps": 2,
        "out": tmp_path / "o",
        "checkpoint": ckpt,
        "device": "cpu",
        "render": False,
        "renderer": "soft",
    }
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


@pytest.mark.parametrize(("part", "chart_h"), [(Part.face, 256), (Part.face_shape, 128)])
def test_face_without_flame_draws_the_process_as_numbers(tmp_path, monkeypatch, part, chart_h):
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(tmp_path / "no_models"))
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "no_cache"))
    plain = svc.run(request(tmp_path, part, out=tmp_path / "plain"))
    res = svc.run(request(tmp_path, part, process_video=True))
    a, b = np.load(plain.outputs["poses"]), np.load(res.outputs["poses"])
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    assert any("process.mp4 shows the coefficients" in line and "FLAME" in line for line in res.lines)
    frames = read_video(res.outputs["process_video"])
    fps, hold = video_timing(3)
    # a caption band over two rows (x_t, x0) of two charts each, 4 px apart; the encoder pads to 16 px
    height, width = max(18, 256 // 7) + 2 * chart_h + 4, 2 * 256 + 4
    assert frames.shape == (3 + hold, -(-height // 16) * 16, -(-width // 16) * 16, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5  # noise → coefficients
    assert (
        np.abs(frames[-1].astype(int) - frames[-2].astype(int)).mean() < 0.5
    )  # the final hold (lossy video)


# ---------------------------------------------------------------------------------------------- grid.png
def grid_image(res):
    from PIL import Image

    with Image.open(res.outputs["grid"]) as im:
        return np.asarray(im.convert("RGB"))


def covered(image):
    from tests.render._figures import covered as cov

    return cov(image)


def title_height(img):
    """Rows of the white title band on top (ends at the grey rule)."""
    return int(np.flatnonzero((img[:, :, 0] == 215).all(axis=1))[0]) + 1


def test_grid_count_is_reported_and_grid_chooses_it(tmp_path):
    res = svc.run(request(tmp_path, Part.body, n=5, render=True, grid=3))
    assert res.info["grid_count"] == 3
    assert any("first 3 of 5 poses" in line for line in res.lines)
    img = grid_image(res)
    assert img.shape[1] == 2 * 256  # a near-square grid of 3 cells: 2 columns
    res = svc.run(request(tmp_path, Part.body, n=2, render=True, out=tmp_path / "all"))
    assert res.info["grid_count"] == 2 and not any("first" in line for line in res.lines)
    res = svc.run(request(tmp_path, Part.body, n=2, render=True, grid=0, out=tmp_path / "none"))
    assert res.info["grid_count"] == 0 and "grid" not in res.outputs
    with pytest.raises(Exception, match="--grid"):
        svc.run(request(tmp_path, Part.body, n=2, render=True, grid=-1, out=tmp_path / "bad"))


def test_hand_grid_shows_palm_and_back_of_each_hand_centred(tmp_path):
    res = svc.run(request(tmp_path, Part.hand, n=2, render=True))
    img = grid_image(res)
    sheet = img[title_height(img) :]
    cell = 160
    assert sheet.shape == (cell, 4 * cell, 3)  # hand 1 palm, back, hand 2 palm, back
    for c in range(4):
        mask = covered(sheet[:, c * cell : (c + 1) * cell])
        mask[: cell // 8] = False  # the caption
        ys, xs = np.nonzero(mask)
        assert mask.mean() > 0.05
        assert abs((xs.min() + xs.max()) / 2 - cell / 2) < cell * 0.08  # centred
        assert abs((ys.min() + ys.max()) / 2 - cell / 2) < cell * 0.12


def test_hand_items_are_upright_with_the_palm_to_the_camera():
    import torch

    from dposer_cli.services._render import load_part_body
    from dposer_cli.tasks.pictures import pose_items

    (item,) = pose_items(Part.hand, torch.zeros(1, 45), load_part_body(Part.hand, None, torch.device("cpu")))
    v = item["vertices"]
    assert np.ptp(v[:, 1]) > 1.5 * np.ptp(v[:, 0])  # fingers up: taller than wide
    assert v[:, 1].max() > 0.12 and v[:, 1].min() > -0.05  # from the wrist (origin) upwards
    # the mean hand's fingers curl towards the palm, i.e. towards the camera (+z) at the top
    top = v[:, 1] > 0.6 * v[:, 1].max()
    assert v[top, 2].mean() > v[:, 2].mean()


def test_wholebody_grid_has_a_body_both_hands_and_the_face_per_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(tmp_path / "no_models"))
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "no_cache"))
    res = svc.run(request(tmp_path, Part.wholebody, n=2, render=True))
    assert res.info["grid_count"] == 2
    img = grid_image(res)
    sheet = img[title_height(img) :]
    block_w, block_h = 192 + 160, 384
    assert sheet.shape == (block_h, 2 * block_w + 4, 3)
    for b in range(2):
        block = sheet[:, b * (block_w + 4) : b * (block_w + 4) + block_w]
        panels = [block[:, :192]] + [
            block[k * 128 : (k + 1) * 128, 192:] for k in range(3)
        ]  # body, hands, face
        for panel in panels:
            inner = covered(panel)
            inner[:16] = False  # captions
            assert inner.mean() > 0.03
        # no FLAME: the face panel is a chart (blue bars), not a mesh
        bars = np.abs(panels[3].astype(int) - (70, 110, 190)).sum(-1) < 30
        assert bars.sum() > 20


def test_face_without_flame_draws_charts_and_says_meshes_need_flame(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(tmp_path / "no_models"))
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "no_cache"))
    for part in (Part.face, Part.face_shape):
        res = svc.run(request(tmp_path, part, n=3, render=True, out=tmp_path / part.value))
        assert res.info["grid_count"] == 3
        img = grid_image(res)
        head, body = img[: title_height(img)], img[title_height(img) :]
        assert head.shape[0] > 40  # title and the FLAME note
        assert (np.abs(body.astype(int) - (70, 110, 190)).sum(-1) < 30).sum() > 200  # coefficient bars


def test_face_with_flame_draws_meshes(tmp_path):
    from tests._fixtures.body_models import write_flame

    write_flame(tmp_path / "models" / "flame")
    ckpt = write_tiny_prior(tmp_path / "gaussian_face.pt", Part.face, gaussian=True)  # faces of a sane size
    res = svc.run(
        request(tmp_path, Part.face, n=2, render=True, body_model=tmp_path / "models", checkpoint=ckpt)
    )
    img = grid_image(res)
    body = img[title_height(img) :]
    assert body.shape[:2] == (256, 512)
    for c in range(2):
        assert covered(body[:, c * 256 : (c + 1) * 256]).mean() > 0.05
    assert (np.abs(body.astype(int) - (70, 110, 190)).sum(-1) < 30).sum() == 0  # meshes, not charts


def test_wholebody_grid_with_smplx_and_flame_shows_a_face_mesh(tmp_path):
    from tests._fixtures.body_models import write_body_models_tree

    root = write_body_models_tree(tmp_path / "models")
    res = svc.run(request(tmp_path, Part.wholebody, n=2, render=True, body_model=root))
    img = grid_image(res)
    block = img[title_height(img) :]
    face = block[2 * 128 : 3 * 128, 192 : 192 + 160]
    inner = covered(face)
    inner[:16] = False
    assert inner.mean() > 0.05  # the FLAME face at the sample's jaw pose and expression
    assert (np.abs(face.astype(int) - (70, 110, 190)).sum(-1) < 30).sum() == 0  # not a chart
