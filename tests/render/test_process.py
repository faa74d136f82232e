"""render.process: sampling-process frames (one camera for all frames, captions, final hold) and timing."""

import numpy as np
import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.render.process import MAX_VIDEO_FRAMES, process_frames, video_timing
from tests.render._figures import covered

CELL = 96


def meshes(figures, *ids):
    return [{"vertices": figures[i]["vertices"], "faces": figures[i]["faces"]} for i in ids]


def cells(frame, rows, cols, band):
    grid = frame[band:]
    return [
        grid[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] for r in range(rows) for c in range(cols)
    ]


def test_frames_have_the_grid_the_captions_and_the_hold(figures):
    frames = [meshes(figures, 0, 1, 2, 3), meshes(figures, 1, 2, 3, 4), meshes(figures, 2, 3, 4, 5)]
    out = process_frames(
        frames,
        captions=["step 0/2", "step 1/2", "step 2/2 · result"],
        cols=2,
        cell=CELL,
        row_labels=["x_t", "x0"],
        renderer="soft",
        hold=4,
    )
    band = out.shape[1] - 2 * CELL
    assert out.dtype == np.uint8 and out.shape == (7, band + 2 * CELL, 2 * CELL, 3) and band >= 18
    for k in range(3, 7):  # the final hold repeats the last frame
        assert np.array_equal(out[k], out[2])
    assert not np.array_equal(out[0, band:], out[2, band:])  # the poses changed
    assert not np.array_equal(out[0, :band], out[1, :band])  # so did the caption
    assert (out[0, :band].astype(int).sum(-1) < 300).sum() > 20  # dark caption text on the white band
    for frame in out[:3]:
        for c in cells(frame, 2, 2, band):
            assert covered(c).mean() > 0.02  # every cell shows a figure


def test_one_camera_for_every_frame(figures):
    """A pose that does not change keeps its pixels when the other cells change (same camera and scale)."""
    frames = [meshes(figures, 0, 1), meshes(figures, 0, 4), meshes(figures, 0, 5)]
    out = process_frames(frames, captions=["a", "b", "c"], cols=2, cell=CELL, renderer="soft")
    band = out.shape[1] - CELL
    first = [cells(f, 1, 2, band)[0] for f in out]
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[0], first[2])
    # centred: the figure's bounding box is (about) in the middle of its cell
    ys, xs = np.nonzero(covered(first[0]))
    assert abs((xs.min() + xs.max()) / 2 - CELL / 2) < CELL * 0.1
    assert abs((ys.min() + ys.max()) / 2 - CELL / 2) < CELL * 0.1


def test_skeleton_items_and_row_colours(figures):
    skel = [{"joints": f["joints"], "parents": f["parents"]} for f in figures[:2]]
    out = process_frames([skel, skel[::-1]], captions=["a", "b"], cols=1, cell=CELL, renderer="soft")
    assert out.shape[0] == 2 and covered(out[0, -CELL:]).mean() > 0.01
    warm = process_frames(
        [meshes(figures, 0)], captions=["a"], cols=1, cell=CELL, renderer="soft", row_colors=[(0.9, 0.3, 0.2)]
    )
    clay = process_frames([meshes(figures, 0)], captions=["a"], cols=1, cell=CELL, renderer="soft")
    assert not np.array_equal(warm, clay)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"frames": [], "captions": []}, "no frames"),
        ({"captions": ["a"]}, "1 captions for 2 frames"),
        ({"frames": "uneven"}, "frame 1 has 1 items"),
        ({"row_labels": ["a", "b", "c"]}, "3 row labels for 1 rows"),
        ({"cols": 0}, "cols >= 1"),
    ],
)
def test_bad_input_is_one_line(figures, kwargs, pattern):
    args = {
        "frames": [meshes(figures, 0, 1), meshes(figures, 1, 2)],
        "captions": ["a", "b"],
        "cols": 2,
        "cell": CELL,
        "renderer": "soft",
    }
    if kwargs.get("frames") == "uneven":
        kwargs = {"frames": [meshes(figures, 0, 1), meshes(figures, 1)]}
    args.update(kwargs)
    with pytest.raises(InputError, match=pattern) as err:
        process_frames(**args)
    assert "\n" not in str(err.value)


def test_video_timing_keeps_the_budget():
    for p in range(1, MAX_VIDEO_FRAMES):
        fps, hold = video_timing(p)
        assert 8 <= fps <= 30 and 1 <= hold <= fps and p + hold <= MAX_VIDEO_FRAMES
    assert video_timing(90) == (30, 30)
    assert video_timing(MAX_VIDEO_FRAMES)[1] == 0
    with pytest.raises(InputError):
        video_timing(MAX_VIDEO_FRAMES + 1)
