"""Public drawing functions: meshes, skeletons, sheets, overlays, keypoints, motion."""

import numpy as np
import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.render import draw, scene
from tests.render._figures import PARENTS, covered, iou, pose_joints, stick_mesh


def test_render_mesh_draws_a_figure_that_depends_on_the_pose(figures, renderer):
    a = draw.render_mesh(figures[0]["vertices"], figures[0]["faces"], size=128, renderer=renderer)
    b = draw.render_mesh(figures[1]["vertices"], figures[1]["faces"], size=128, renderer=renderer)
    assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
    assert 0.03 < covered(a).mean() < 0.6
    assert (covered(a) ^ covered(b)).sum() > 200  # arms down vs up


def test_render_mesh_takes_width_height(figures):
    img = draw.render_mesh(figures[0]["vertices"], figures[0]["faces"], size=(96, 160), renderer="soft")
    assert img.shape == (160, 96, 3)


@pytest.mark.usefixtures("need_pyrender")
@pytest.mark.parametrize("view", ["front", "three_quarter", "top"])
def test_pyrender_and_soft_agree(figures, view):
    fig = figures[3]
    soft = draw.render_mesh(fig["vertices"], fig["faces"], size=192, view=view, renderer="soft")
    gl = draw.render_mesh(fig["vertices"], fig["faces"], size=192, view=view, renderer="pyrender")
    both = covered(soft) & covered(gl)
    assert iou(covered(soft), covered(gl)) > 0.8
    assert np.abs(soft.astype(int) - gl.astype(int))[both].mean() < 12  # same lights, same colours


def test_render_mesh_rejects_bad_input_in_one_line(figures):
    v, f = figures[0]["vertices"], figures[0]["faces"]
    for bad_v, bad_f in [(v[:, :2], f), (v, f + len(v)), (v, f.astype(float)), (np.full_like(v, np.nan), f)]:
        with pytest.raises(InputError) as err:
            draw.render_mesh(bad_v, bad_f, size=64, renderer="soft")
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown view"):
        draw.render_mesh(v, f, size=64, view="sideways", renderer="soft")


def test_render_skeleton_draws_bones_that_follow_the_pose():
    a = draw.render_skeleton(pose_joints(), PARENTS, size=128)
    b = draw.render_skeleton(pose_joints(arm_l=1.2, arm_r=1.2), PARENTS, size=128)
    assert a.shape == (128, 128, 3) and covered(a).mean() > 0.02
    assert (covered(a) ^ covered(b)).sum() > 100
    with pytest.raises(InputError, match="parents"):
        draw.render_skeleton(pose_joints(), PARENTS[:-1])


def _cells(sheet: np.ndarray, cell: int) -> list[np.ndarray]:
    rows, cols = sheet.shape[0] // cell, sheet.shape[1] // cell
    return [
        sheet[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] for r in range(rows) for c in range(cols)
    ]


def test_contact_sheet_grid_has_one_figure_per_cell(figures, renderer):
    items = [{"vertices": f["vertices"], "faces": f["faces"]} for f in figures[:5]]
    sheet = draw.contact_sheet(items, cols=3, cell=96, renderer=renderer)
    assert sheet.shape == (192, 288, 3)
    cells = _cells(sheet, 96)
    assert all(covered(c).mean() > 0.02 for c in cells[:5])
    assert covered(cells[5]).sum() == 0  # the unused cell stays empty


def test_one_draw_call_places_each_mesh_exactly_as_if_drawn_alone(figures, renderer):
    # the same two meshes laid out 2x1 and 1x2: every cell must be the same picture
    items = [{"vertices": f["vertices"], "faces": f["faces"]} for f in figures[2:4]]
    wide = _cells(draw.contact_sheet(items, cols=2, cell=96, renderer=renderer), 96)
    tall = _cells(draw.contact_sheet(items, cols=1, cell=96, renderer=renderer), 96)
    for a, b in zip(wide, tall, strict=True):
        assert iou(covered(a), covered(b)) > 0.97
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_contact_sheet_shares_one_camera_so_sizes_compare(sphere):
    v, f = sphere
    small, big = {"vertices": v, "faces": f}, {"vertices": 2 * v, "faces": f}
    cells = _cells(draw.contact_sheet([small, big], cell=96, renderer="soft"), 96)
    ratio = covered(cells[1]).sum() / covered(cells[0]).sum()
    assert 3.0 < ratio < 5.0  # twice the radius, four times the area


def test_contact_sheet_mixes_skeletons_and_draws_labels(figures):
    items = [
        {"vertices": figures[0]["vertices"], "faces": figures[0]["faces"]},
        {"joints": figures[1]["joints"], "parents": figures[1]["parents"]},
    ]
    plain = draw.contact_sheet(items, cell=128, renderer="soft")
    labelled = draw.contact_sheet(items, cell=128, renderer="soft", labels=["mesh", "joints"])
    assert covered(_cells(plain, 128)[1]).mean() > 0.01
    assert (plain[:20, :60] != labelled[:20, :60]).any()  # caption in the top-left corner
    assert (plain[:20, 128:188] != labelled[:20, 128:188]).any()


def test_contact_sheet_rejects_bad_items():
    with pytest.raises(InputError, match="item 0 has keys") as err:
        draw.contact_sheet([{"verts": np.zeros((3, 3))}], renderer="soft")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="labels"):
        draw.contact_sheet([{"joints": pose_joints(), "parents": PARENTS}], labels=["a", "b"])
    with pytest.raises(InputError, match="no items"):
        draw.contact_sheet([])


def _people() -> list[np.ndarray]:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    v, f = np.asarray(m.vertices), np.asarray(m.faces)
    return [v + [0.4, -0.1, 3.0], v + [-0.6, 0.2, 4.0]], f


def test_overlay_puts_the_mesh_where_the_projection_says(renderer):
    (a, b), f = _people()
    photo = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    focal, center = (500.0, 480.0), (160.0, 120.0)
    out = draw.overlay_mesh(photo, [a, b], f, focal=focal, center=center, renderer=renderer)
    assert out.shape == photo.shape and out.dtype == np.uint8
    for person in (a, b):
        x, y, z = person.mean(axis=0)
        u, v = round(focal[0] * x / z + center[0]), round(focal[1] * y / z + center[1])
        assert (out[v, u] != photo[v, u]).any()  # covered: blended
        np.testing.assert_array_equal(out[v + 40, u + 48], photo[v + 40, u + 48]) if v + 40 < 240 else None
    np.testing.assert_array_equal(out[:5, :5], photo[:5, :5])  # far from both: untouched
    assert (
        draw.overlay_mesh(photo, a, f, focal=500.0, center=center, alpha=0.0, renderer=renderer) == photo
    ).all()


def test_overlay_of_a_stacked_array_colours_people_differently():
    (a, b), f = _people()
    grey = np.full((240, 320, 3), 128, np.uint8)
    out = draw.overlay_mesh(
        grey, np.stack([a, b + [0, 0, -1.0]]), f, focal=500, center=(160, 120), alpha=1.0, renderer="soft"
    )
    ua, va = (500 * a.mean(0)[:2] / a.mean(0)[2] + [160, 120]).round().astype(int)
    ub, vb = (500 * b.mean(0)[:2] / 3.0 + [160, 120]).round().astype(int)
    assert not np.array_equal(out[va, ua], out[vb, ub])


def test_draw_keypoints_skips_low_confidence_points_and_their_edges():
    img = np.full((100, 100, 3), 200, np.uint8)
    kp = np.array([[20, 20, 0.9], [80, 20, 0.9], [50, 80, 0.1]])
    out = draw.draw_keypoints(img, kp, edges=[(0, 1), (1, 2)])
    assert (out[20, 20] != 200).any() and (out[20, 50] != 200).any()  # dot, and the confident edge
    assert (out[80, 50] == 200).all() and (out[50, 65] == 200).all()  # hidden point, and its edge
    assert (img == 200).all()  # input untouched


def test_draw_keypoints_handles_several_people_and_rejects_bad_edges():
    img = np.zeros((64, 64, 3), np.uint8)
    kp = np.array([[[10, 10, 1.0], [20, 20, 1.0]], [[40, 40, 1.0], [50, 50, 1.0]]])
    out = draw.draw_keypoints(img, kp, edges=[(0, 1)])
    assert not np.array_equal(out[10, 10], out[40, 40])  # one colour per person
    with pytest.raises(InputError, match="edges"):
        draw.draw_keypoints(img, kp, edges=[(0, 5)])


def test_motion_frames_with_a_fixed_camera_show_the_movement(sphere, renderer):
    v, f = sphere
    seq = np.stack([v + [x, 0, 0] for x in np.linspace(-1, 1, 4)])
    frames = draw.motion_frames(seq, f, size=64, renderer=renderer)
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    xs = [np.nonzero(covered(fr))[1].mean() for fr in frames]
    assert np.all(np.diff(xs) > 5)
    follow = draw.motion_frames(seq, f, size=64, renderer=renderer, fixed_camera=False)
    assert np.ptp([np.nonzero(covered(fr))[1].mean() for fr in follow]) < 1.0


def test_side_by_side_pads_and_labels():
    a = np.zeros((3, 32, 48, 3), np.uint8)
    b = np.full((3, 40, 16, 3), 255, np.uint8)
    out = draw.side_by_side(a, b, labels=("noisy", "denoised"))
    assert out.shape == (3, 40, 64, 3)
    assert (out[:, 35:, :48] == (np.asarray(scene.BACKGROUND) * 255 + 0.5).astype(np.uint8)).all()
    with pytest.raises(InputError, match="frames"):
        draw.side_by_side(a, b[:2])


def test_stick_figure_helper_is_a_closed_mesh():
    import trimesh

    v, f = stick_mesh(pose_joints())
    parts = trimesh.Trimesh(v, f, process=False).split(only_watertight=False)
    assert all(p.is_winding_consistent for p in parts)


def test_fit_within_scales_the_longer_side_down_and_leaves_small_images_alone():
    from dposer_cli.render.draw import fit_within

    tall = np.zeros((1920, 1080, 3), np.uint8)
    tall[:, 540:] = 200  # right half light: stays on the right
    out = fit_within(tall, 1280)
    assert out.shape == (1280, 720, 3) and out.dtype == np.uint8
    assert out[:, :350].max() == 0 and out[:, 370:].min() == 200
    small = np.full((360, 480, 3), 7, np.uint8)
    np.testing.assert_array_equal(fit_within(small, 1280), small)
