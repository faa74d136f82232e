"""The numpy z-buffer renderer against geometry we can compute by hand."""

import numpy as np

from dposer_cli.render import scene, shading
from dposer_cli.render.soft import rasterize_soft, zbuffer

INTR = shading.Intrinsics(100.0, 100.0, 31.5, 31.5, 64, 64)


def _tri(z: float, scale: float = 1.0) -> np.ndarray:
    """A triangle around the optical axis at depth z whose normal (right-hand rule) faces the camera."""
    return np.array([[-0.2, 0.2, z], [0.2, 0.2, z], [0.0, -0.2, z]]) * [scale, scale, 1]


def _draw(verts, faces):
    n = np.tile([0.0, 0.0, -1.0], (len(verts), 1))
    return rasterize_soft(verts, faces, n, np.full((len(verts), 3), 0.6), INTR)


def test_nearest_triangle_wins_regardless_of_order():
    verts = np.concatenate([_tri(2.0, 2.0), _tri(1.0)])
    for faces in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        uv = shading.project(verts, INTR)
        buf = zbuffer(uv[np.array(faces)], verts[:, 2][np.array(faces)], 64, 64)
        near = faces.index([3, 4, 5])
        assert buf[31, 31] == near  # centre: both cover it, the near one is drawn


def test_intersecting_triangles_split_where_they_cross():
    # two quads (as triangle pairs) tilted in opposite directions cross at x = 0
    a = np.array([[-1, -1, 1.5], [1, -1, 2.5], [1, 1, 2.5], [-1, 1, 1.5]], float)  # near on the left
    b = np.array([[-1, -1, 2.5], [1, -1, 1.5], [1, 1, 1.5], [-1, 1, 2.5]], float)  # near on the right
    verts = np.concatenate([a, b]) * [0.3, 0.3, 1]
    faces = np.array([[0, 2, 1], [0, 3, 2], [4, 6, 5], [4, 7, 6]])
    uv = shading.project(verts, INTR)
    buf = zbuffer(uv[faces], verts[:, 2][faces], 64, 64)
    assert set(buf[31, 21:30].tolist()) <= {0, 1}  # left half: quad a
    assert set(buf[31, 34:43].tolist()) <= {2, 3}  # right half: quad b


def test_back_faces_are_culled():
    verts = _tri(2.0)
    _, front = _draw(verts, np.array([[0, 1, 2]]))
    _, back = _draw(verts, np.array([[0, 2, 1]]))
    assert front.sum() > 50 and back.sum() == 0


def test_geometry_behind_the_camera_is_not_drawn():
    _, mask = _draw(_tri(-2.0), np.array([[0, 1, 2]]))
    assert mask.sum() == 0


def test_sphere_silhouette_matches_the_analytic_disc(sphere):
    v, f = sphere  # radius 0.5, subdivision 3 (its polygon slightly undershoots the true sphere)
    d, focal, size = 3.0, 400.0, 256
    intr = shading.Intrinsics(focal, focal, (size - 1) / 2, (size - 1) / 2, size, size)
    verts = v + [0, 0, d]
    _, mask = rasterize_soft(verts, f, scene.vertex_normals(verts, f), np.full((len(v), 3), 0.6), intr)
    radius = focal * 0.5 / np.sqrt(d**2 - 0.5**2)  # tangent cone of a sphere
    assert abs(mask.sum() / (np.pi * radius**2) - 1) < 0.03
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - (size - 1) / 2) < 0.5 and abs(ys.mean() - (size - 1) / 2) < 0.5


def test_pixel_colour_follows_the_shading_model(sphere):
    v, f = sphere
    verts = v + [0, 0, 3.0]
    intr = shading.Intrinsics(400.0, 400.0, 63.0, 63.0, 127, 127)
    color = np.array([0.8, 0.5, 0.3])
    img, _ = rasterize_soft(verts, f, scene.vertex_normals(verts, f), np.tile(color, (len(v), 1)), intr)
    expected = shading.shade(np.array([[0.0, 0.0, -1.0]]), color[None])[0]  # the centre faces the camera
    np.testing.assert_allclose(img[63, 63].astype(int), expected.astype(int), atol=3)


def test_chunked_passes_give_the_same_picture(sphere, monkeypatch):
    from dposer_cli.render import soft

    v, f = sphere
    verts = v + [0, 0, 3.0]
    uv = shading.project(verts, INTR)
    whole = zbuffer(uv[f], verts[:, 2][f], 64, 64)
    monkeypatch.setattr(soft, "CHUNK", 97)
    np.testing.assert_array_equal(zbuffer(uv[f], verts[:, 2][f], 64, 64), whole)


def test_faces_with_a_non_finite_corner_are_skipped_and_the_rest_drawn():
    good = _tri(2.0)
    for bad in (np.inf, -np.inf, np.nan):
        corner = _tri(2.0, 1.5)
        corner[1, 0] = bad  # one coordinate of one corner
        verts = np.concatenate([good, corner])
        _, alone = _draw(good, np.array([[0, 1, 2]]))
        _, mask = _draw(verts, np.array([[0, 1, 2], [3, 4, 5]]))
        np.testing.assert_array_equal(mask, alone)


def test_zbuffer_matches_a_pixel_by_pixel_reference_on_random_triangles():
    """Each face's candidate pixels are found row by row (the row's span of the triangle, then the exact test):
    no covered pixel may be missed, for large, thin and nearly degenerate triangles alike."""
    rng = np.random.default_rng(7)
    w, h = 48, 40
    uv = rng.uniform(-10, 58, size=(60, 3, 2))
    uv[:10] = uv[:10, :1] + rng.normal(scale=0.4, size=(10, 3, 2))  # small ones
    uv[10:20, 2] = uv[10:20, 0] + (uv[10:20, 1] - uv[10:20, 0]) * 0.5 + 1e-3  # slivers
    uv[20:25, :, 1] = np.round(uv[20:25, :, 1])  # edges along pixel rows
    z = rng.uniform(1.0, 5.0, size=(60, 3))
    got = zbuffer(uv, z, w, h)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    best, want = np.zeros((h, w)), np.full((h, w), -1)
    for f in range(len(uv)):
        a, v0, v1 = uv[f, 0], uv[f, 1] - uv[f, 0], uv[f, 2] - uv[f, 0]
        den = v0[0] * v1[1] - v1[0] * v0[1]
        if abs(den) <= 1e-12:
            continue
        a1, b1, a2, b2 = v1[1] / den, -v1[0] / den, -v0[1] / den, v0[0] / den
        c1, c2 = -(a1 * a[0] + b1 * a[1]), -(a2 * a[0] + b2 * a[1])
        l1, l2 = a1 * xs + (b1 * ys + c1), a2 * xs + (b2 * ys + c2)
        inside = (l1 >= -1e-9) & (l2 >= -1e-9) & (l1 + l2 <= 1 + 1e-9)
        iz = 1 / z[f, 0] + l1 * (1 / z[f, 1] - 1 / z[f, 0]) + l2 * (1 / z[f, 2] - 1 / z[f, 0])
        nearer = inside & (iz > best)
        best[nearer], want[nearer] = iz[nearer], f
    covered = want >= 0
    np.testing.assert_array_equal(got >= 0, covered)
    assert covered.sum() > 500
    agree = got[covered] == want[covered]
    assert agree.mean() > 0.99  # the nearest face (ties between faces at equal depth aside)
