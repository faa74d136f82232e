"""render.draw building blocks of the command pictures: shared framing, centring, colours, IK markers, the
palm frame, text panels (title, legend, tile), charts (bars, face, line plot) and the view from above."""

import numpy as np
import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.render import draw, scene
from tests.render._figures import PARENTS, covered, pose_joints

BG = (np.asarray(scene.BACKGROUND) * 255 + 0.5).astype(int)


def cells(sheet: np.ndarray, w: int, h: int) -> list[np.ndarray]:
    rows, cols = sheet.shape[0] // h, sheet.shape[1] // w
    return [sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(rows) for c in range(cols)]


def centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2


def hue_mask(image: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.06) -> np.ndarray:
    """Pixels whose chromaticity (r, g, b) / sum matches the sRGB colour's (shading keeps the ratios roughly)."""
    img = image.astype(np.float64)
    chroma = img / np.maximum(img.sum(-1, keepdims=True), 1)
    want = np.asarray(rgb) / sum(rgb)
    return (np.abs(chroma - want).max(-1) < tol) & covered(image)


def test_a_given_framing_draws_the_same_sheet_and_must_fit_the_cells(figures):
    items = [{"vertices": f["vertices"], "faces": f["faces"]} for f in figures[:3]]
    framing = scene.frame_points(np.concatenate([it["vertices"] for it in items]), "front", (80, 120))
    own = draw.contact_sheet(items, cols=3, cell=(80, 120), renderer="soft")
    given = draw.contact_sheet(items, cols=3, cell=(80, 120), renderer="soft", framing=framing)
    assert own.shape == (120, 240, 3) and np.array_equal(own, given)
    with pytest.raises(InputError, match="framing is for 80x120 cells, the cells are 96x96"):
        draw.contact_sheet(items, cell=96, renderer="soft", framing=framing)


def test_centred_items_keep_one_scale(sphere):
    v, f = sphere
    items = [{"vertices": v + [3.0, 0, 0], "faces": f}, {"vertices": 2 * v - [0, 2.0, 0], "faces": f}]
    sheet = draw.contact_sheet(items, cell=96, renderer="soft", center=True)
    small, big = (covered(c) for c in cells(sheet, 96, 96))
    for mask in (small, big):
        cx, cy = centre(mask)
        assert abs(cx - 47.5) < 2 and abs(cy - 47.5) < 2
    assert 3.0 < big.sum() / small.sum() < 5.0  # twice the radius, four times the area: one scale


def test_per_vertex_colours_show_in_the_picture(figures):
    fig = figures[0]
    v = fig["vertices"]
    colors = np.tile(scene.BODY_COLOR, (len(v), 1))
    legs = v[:, 1] < 0.9
    colors[legs] = draw.HIGHLIGHT_COLOR
    sheet = draw.contact_sheet(
        [{"vertices": v, "faces": fig["faces"], "colors": colors}], cell=128, renderer="soft"
    )
    hot = hue_mask(sheet, draw.HIGHLIGHT_COLOR)
    assert hot.sum() > 100
    ys = np.nonzero(hot)[0]
    assert ys.min() > 128 * 0.45  # only the legs (the lower part of the cell) are highlighted
    with pytest.raises(InputError, match="colors have shape"):
        draw.contact_sheet([{"vertices": v, "faces": fig["faces"], "colors": colors[:5]}], renderer="soft")


def test_skeleton_hides_joints_and_marks_seen_and_hidden_targets():
    joints = pose_joints()
    hidden = np.zeros(len(joints), bool)
    hidden[[11, 12]] = True  # left knee and ankle
    joints_nan = joints.copy()
    joints_nan[hidden] = np.nan  # allowed where hidden
    full = draw.contact_sheet([{"joints": joints, "parents": PARENTS}], cell=160, renderer="soft")
    part = draw.contact_sheet(
        [{"joints": joints_nan, "parents": PARENTS, "hidden": hidden}], cell=160, renderer="soft"
    )
    assert covered(part).sum() < covered(full).sum()
    targets = joints + [0.05, 0, 0]
    seen = ~np.isin(np.arange(len(joints)), [6, 9])  # the wrists hidden from the solver
    img = draw.contact_sheet(
        [{"joints": joints, "parents": PARENTS, "targets": targets, "target_visible": seen}],
        cell=160,
        renderer="soft",
    )
    green = (np.abs(img.astype(int) - draw.TARGET_COLOR).sum(-1) < 40).sum()
    red = (np.abs(img.astype(int) - draw.HIDDEN_TARGET_COLOR).sum(-1) < 40).sum()
    assert green > 100 and red > 10
    with pytest.raises(InputError, match="joints contain NaN"):
        draw.contact_sheet([{"joints": joints_nan, "parents": PARENTS}], renderer="soft")
    with pytest.raises(InputError, match="targets have shape"):
        draw.contact_sheet([{"joints": joints, "parents": PARENTS, "targets": targets[:3]}], renderer="soft")


def test_palm_frame_turns_the_palm_to_the_camera_and_the_fingers_up():
    rng = np.random.default_rng(0)
    # a right hand lying along -x, palm down (-y), index towards +z (the MANO rest pose), then turned
    hand = np.array([[0, 0, 0], [-0.1, 0, 0.02], [-0.1, 0, 0], [-0.08, 0, -0.04]], np.float64)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    turned = hand @ q.T
    rot = draw.palm_frame(*turned, side="right")
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(rot), 1.0)
    local = (turned - turned[0]) @ rot.T
    assert local[2, 1] > 0.09 and abs(local[2, 0]) < 1e-9  # wrist → middle knuckle points up
    palm_down = np.array([0.0, -1.0, 0.0]) @ q.T  # the palm normal, turned with the hand
    assert np.allclose(rot @ palm_down, [0, 0, 1], atol=1e-6)
    mirrored = draw.palm_frame(*(turned * [-1, 1, 1]), side="left")
    assert np.allclose(mirrored @ (palm_down * [-1, 1, 1]), [0, 0, 1], atol=1e-6)
    with pytest.raises(InputError, match="collinear"):
        draw.palm_frame(np.zeros(3), np.ones(3), 2 * np.ones(3), 3 * np.ones(3))


def test_label_title_tile_and_legend():
    img = np.full((40, 120, 3), 255, np.uint8)
    draw.label(img, "hello", 4, 4, 14, color=(200, 0, 0))
    assert (img[..., 1] < 200).sum() > 20 and draw.text_width("hello", 14) > 20
    titled = draw.titled(np.zeros((50, 200, 3), np.uint8), "a title", note="a note")
    assert titled.shape[1] == 200 and titled.shape[0] > 50 + 20 and (titled[:20] < 128).any()
    grid = draw.tile([np.zeros((10, 20, 3), np.uint8), np.zeros((30, 10, 3), np.uint8)] * 2, cols=3, gap=2)
    assert grid.shape == (30 * 2 + 2, 20 * 3 + 2 * 2, 3)
    band = draw.legend(
        [
            ("dot", (255, 0, 0), "one"),
            ("ring", (0, 0, 255), "two"),
            ("square", (0, 1, 0), "3"),
            ("line", (0, 0, 0), "four"),
            ("cross", (0, 0, 0), "five"),
        ]
        * 4,
        width=200,
        px=12,
    )
    assert band.shape[1] == 200 and band.shape[0] > 2 * 12  # wrapped onto several lines
    assert ((band[..., 0] > 200) & (band[..., 1] < 60)).any()  # the red dot
    with pytest.raises(InputError, match="unknown glyph"):
        draw.legend([("star", (0, 0, 0), "x")], width=100)


def test_bar_chart_draws_signed_bars_on_one_range():
    values = np.array([1.0, -1.0, 0.5, 0.0])
    chart = draw.bar_chart(values, size=(200, 100), title="coefficients", limit=2.0)
    assert chart.shape == (100, 200, 3)
    blue = np.abs(chart.astype(int) - draw.BAR_COLOR).sum(-1) < 30
    assert blue.sum() > 50
    ys, xs = np.nonzero(blue)
    span = xs.max() - xs.min()
    first = xs < xs.min() + span * 0.3  # bar 0 (positive) lies above bar 1 (negative)
    second = (xs > xs.min() + span * 0.3) & (xs < xs.min() + span * 0.55)
    assert ys[first].mean() < ys[second].mean()
    with pytest.raises(InputError, match="no values"):
        draw.bar_chart(np.zeros(0))


def test_face_chart_shows_the_jaw_and_the_expression():
    closed = draw.face_chart(np.zeros(3), np.zeros(10), size=200, title="1", limit=2.0)
    opened = draw.face_chart(np.array([0.4, 0, 0]), np.linspace(-2, 2, 10), size=200, title="1", limit=2.0)
    assert closed.shape == opened.shape == (200, 200, 3)
    orange = [
        (np.abs(im.astype(int) - np.round(np.array(draw.HIGHLIGHT_COLOR) * 255)).sum(-1) < 40)
        for im in (closed, opened)
    ]
    assert np.nonzero(orange[1])[0].max() > np.nonzero(orange[0])[0].max() + 5  # the jaw line opens downwards
    bars = [(np.abs(im.astype(int) - draw.BAR_COLOR).sum(-1) < 30).sum() for im in (closed, opened)]
    assert bars[1] > bars[0] + 100
    with pytest.raises(InputError, match="jaw_pose"):
        draw.face_chart(np.zeros(4), np.zeros(3))


def test_line_plot_draws_each_series_and_a_cursor():
    t = np.arange(50)
    series = {"noisy": 40 + 5 * np.sin(t / 5), "denoised": 10 + 0 * t}
    plot = draw.line_plot(series, size=(400, 120), cursor=10, title="error", unit="mm")
    assert plot.shape == (120, 400, 3)
    for color in draw.SERIES_COLORS[:2]:
        assert (np.abs(plot.astype(int) - color).sum(-1) < 30).sum() > 100
    other = draw.line_plot(series, size=(400, 120), cursor=40, title="error", unit="mm")
    assert not np.array_equal(plot, other)  # the cursor (and the legend values) moved
    gaps = draw.line_plot({"a": np.where(t % 10 < 5, t, np.nan)}, size=(200, 80))
    assert gaps.shape == (80, 200, 3)
    with pytest.raises(InputError, match="lengths"):
        draw.line_plot({"a": np.ones(3), "b": np.ones(4)})


def test_overhead_view_puts_the_farther_person_higher(sphere):
    v, f = sphere
    near, far = v * 0.4 + [-0.8, 0, 3.0], v * 0.4 + [0.8, 0, 5.0]  # OpenCV camera coordinates
    img = draw.overhead_view(
        [near, far], f, size=(300, 200), labels=["near", "far"], half_fov=0.5, renderer="soft"
    )
    assert img.shape == (200, 300, 3)
    blue = hue_mask(img, scene.PERSON_COLORS[0])
    orange = hue_mask(img, scene.PERSON_COLORS[1])
    assert blue.sum() > 50 and orange.sum() > 50
    assert centre(orange)[1] < centre(blue)[1]  # farther = higher up
    assert centre(orange)[0] > centre(blue)[0]  # right stays right
    with pytest.raises(InputError, match="labels"):
        draw.overhead_view([near, far], f, labels=["one"], renderer="soft")


def test_ring_keypoints_and_segments():
    img = np.full((60, 60, 3), 200, np.uint8)
    ring = draw.draw_keypoints(img, np.array([[30.0, 30.0, 1.0]]), color=(0, 0, 0), marker="ring")
    assert (ring[30, 30] == 200).all() and (ring != 200).any()  # hollow
    dot = draw.draw_keypoints(img, np.array([[30.0, 30.0, 1.0]]), color=(0, 0, 0))
    assert (dot[30, 30] != 200).any()
    seg = draw.draw_segments(
        img, np.array([[5.0, 5.0], [np.nan, 0]]), np.array([[50.0, 5.0], [1.0, 1.0]]), color=(0, 0, 0)
    )
    assert (seg[5, 20] == 0).all() and (seg[30:, :] == 200).all()
    with pytest.raises(InputError, match="marker"):
        draw.draw_keypoints(img, np.zeros((1, 3)), marker="star")


def test_long_titles_wrap_to_the_width():
    one = draw.titled(np.zeros((10, 300, 3), np.uint8), "short")
    long = draw.titled(np.zeros((10, 300, 3), np.uint8), "short", note="a note " * 20)
    assert long.shape[0] > one.shape[0] + 3 * 14  # the note took several lines
    text = long[: long.shape[0] - 10] < 200
    assert not text[:, -5:].any()  # nothing runs off the right edge
