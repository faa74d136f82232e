"""Tiny synthetic SMPL-X / MANO / FLAME files in the real formats, written by the tests themselves.

The licensed models can never ship with dposer, so these files have the official keys, dtypes and
shapes (SMPL-X: 10,475 vertices, 55 joints, 300 + 100 shape/expression directions, landmark tables;
MANO: 778 vertices, 16 joints, chumpy + scipy-sparse pickle; FLAME: 5 joints, 300 + 100 directions,
chumpy pickle plus both landmark embeddings) but random, smooth geometry: a wobbly tube whose posed
meshes are non-degenerate. The pickles reference `chumpy.ch.Ch` exactly like the real files, so
loading them proves that no chumpy install is needed.

    from tests._fixtures.body_models import write_body_models_tree
    root = write_body_models_tree(tmp_path)   # root/smplx, root/mano, root/flame
"""

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SMPLX_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53)  # fmt: skip
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
FLAME_PARENTS = (-1, 0, 1, 1, 1)


def _tube(
    num_vertices: int, segments: int, rng: np.random.Generator, *, top: float, bottom: float, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """A closed-ring tube of exactly `num_vertices` vertices with a smooth random radius; (V,3), (F,3)."""
    rings = -(-num_vertices // segments)
    y = np.linspace(top, bottom, rings)
    theta = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    yy, tt = np.meshgrid(y, theta, indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=4)
    r = radius * (
        1.0
        + 0.25 * np.sin(3.0 * yy + phase[0])
        + 0.1 * np.cos(2 * tt + phase[1])
        + 0.05 * np.sin(7.0 * yy + tt + phase[2])
    )
    verts = np.stack([r * np.cos(tt), yy, r * np.sin(tt)], axis=-1).reshape(-1, 3)[:num_vertices]
    i, j = np.meshgrid(np.arange(rings - 1), np.arange(segments), indexing="ij")
    a, b = i * segments + j, i * segments + (j + 1) % segments
    c, d = a + segments, b + segments
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    faces = faces[(faces < num_vertices).all(axis=1)]
    return verts, faces


def _rig(
    verts: np.ndarray, num_joints: int, segments: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """J_regressor (J, V): each joint halfway between a ring's centre and one of its vertices; LBS weights (V, J)."""
    nv = len(verts)
    rings = nv // segments
    joint_ring = rng.integers(1, rings - 1, size=num_joints)
    joint_seg = rng.integers(0, segments, size=num_joints)
    reg = np.zeros((num_joints, nv))
    for j in range(num_joints):
        ring = joint_ring[j] * segments + np.arange(segments)
        reg[j, ring] += 0.5 / segments
        reg[j, ring[joint_seg[j]]] += 0.5
    vertex_ring = np.arange(nv) // segments
    dist = np.abs(vertex_ring[:, None] - joint_ring[None, :]) + rng.uniform(0, 0.5, size=(nv, num_joints))
    weights = np.exp(-dist / max(rings / 20, 1.0))
    keep = np.argsort(-weights, axis=1)[:, :4]  # four influences, as the real models
    mask = np.zeros_like(weights, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    weights = np.where(mask, weights, 0.0)
    return reg, weights / weights.sum(axis=1, keepdims=True)


def _smooth_dirs(verts: np.ndarray, count: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """(V, 3, count) radial displacement fields varying smoothly along the tube (shape / expression bases)."""
    radial = verts * np.array([1.0, 0.0, 1.0])
    radial /= np.linalg.norm(radial, axis=1, keepdims=True) + 1e-9
    freq = rng.uniform(0.5, 6.0, size=count).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=count).astype(np.float32)
    wave = np.sin(verts[:, 1:2].astype(np.float32) * freq + phase)  # (V, count)
    return (scale * radial.astype(np.float32)[:, :, None] * wave[:, None, :]).astype(np.float32)


def _kintree(parents: tuple[int, ...]) -> np.ndarray:
    row0 = np.array([p if p >= 0 else 4294967295 for p in parents], dtype=np.int64)  # uint32 -1, as shipped
    return np.stack([row0, np.arange(len(parents), dtype=np.int64)])


def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q.astype(np.float32)


@contextlib.contextmanager
def _fake_chumpy() -> Iterator[type]:
    """A throw-away `chumpy` package whose `ch.Ch` pickles like the real one (state dict with `x`)."""
    pkg, sub = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            self.x = x
            self._dirty_vars: set = set()
            self._itr = None

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    sub.Ch = Ch
    pkg.ch = sub
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": sub})
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _dump_with_chumpy(
    path: Path, data: dict, chumpy_keys: tuple[str, ...], sparse_keys: tuple[str, ...]
) -> Path:
    import scipy.sparse

    with _fake_chumpy() as Ch:
        out = dict(data)
        for k in chumpy_keys:
            out[k] = Ch(out[k])
        for k in sparse_keys:
            out[k] = scipy.sparse.csc_matrix(out[k])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump(out, fh, protocol=2)  # the official files are Python 2 protocol-2 pickles
    return path


def smplx_arrays(seed: int = 0, *, num_shape: int = 300, num_expression: int = 100) -> dict[str, np.ndarray]:
    """The arrays of a synthetic SMPL-X v1.1 model (keys as in SMPLX_NEUTRAL.npz)."""
    rng = np.random.default_rng(seed)
    segments = 25
    verts, faces = _tube(10475, segments, rng, top=0.6, bottom=-1.2, radius=0.14)
    reg, weights = _rig(verts, 55, segments, rng)
    nf = len(faces)
    return {
        "v_template": verts.astype(np.float64),
        "f": faces.astype(np.uint32),
        "J_regressor": reg,
        "weights": weights,
        "kintree_table": _kintree(SMPLX_PARENTS),
        "posedirs": (1e-3 * rng.standard_normal((10475, 3, 486), dtype=np.float32)),
        "shapedirs": _smooth_dirs(verts, num_shape + num_expression, 0.01, rng),
        "hands_componentsl": _rotations(rng, 45),
        "hands_componentsr": _rotations(rng, 45),
        "hands_meanl": (0.1 * rng.standard_normal(45)).astype(np.float32),
        "hands_meanr": (0.1 * rng.standard_normal(45)).astype(np.float32),
        "lmk_faces_idx": rng.integers(0, nf, size=51).astype(np.int64),
        "lmk_bary_coords": rng.dirichlet(np.ones(3), size=51),
        "dynamic_lmk_faces_idx": rng.integers(0, nf, size=(79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), size=(79, 17)),
    }


def write_smplx(
    folder: Path, *, fmt: str = "npz", seed: int = 0, num_shape: int = 300, num_expression: int = 100
) -> Path:
    """Write `folder/SMPLX_NEUTRAL.npz` (or `.pkl` with chumpy arrays, like the v1.1 pkl) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = smplx_arrays(seed, num_shape=num_shape, num_expression=num_expression)
    if fmt == "npz":
        path = folder / "SMPLX_NEUTRAL.npz"
        np.savez(path, **data)
        return path
    return _dump_with_chumpy(folder / "SMPLX_NEUTRAL.pkl", data, ("shapedirs", "posedirs"), ())


def mano_arrays(side: str = "right", seed: int = 1) -> dict[str, object]:
    """The arrays of a synthetic MANO model (keys as in MANO_RIGHT.pkl, before pickling)."""
    rng = np.random.default_rng(seed + (side == "left"))
    segments = 14
    verts, faces = _tube(778, segments, rng, top=0.05, bottom=-0.15, radius=0.03)
    if side == "left":
        verts = verts * np.array([-1.0, 1.0, 1.0])
        faces = faces[:, ::-1]
    reg, weights = _rig(verts, 16, segments, rng)
    return {
        "hands_components": _rotations(rng, 45).astype(np.float64),
        "hands_coeffs": rng.standard_normal((20, 45)) * 0.3,
        "hands_mean": rng.standard_normal(45) * 0.1,
        "f": faces.astype(np.uint32),
        "J_regressor": reg,
        "kintree_table": _kintree(MANO_PARENTS),
        "J": reg @ verts,
        "weights": weights,
        "posedirs": 1e-3 * rng.standard_normal((778, 3, 135)),
        "v_template": verts,
        "shapedirs": _smooth_dirs(verts, 10, 0.003, rng).astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_mano(folder: Path, side: str = "right", *, seed: int = 1) -> Path:
    """Write `folder/MANO_{RIGHT,LEFT}.pkl`: a protocol-2 pickle with chumpy `shapedirs` and a sparse regressor."""
    path = Path(folder) / f"MANO_{side.upper()}.pkl"
    return _dump_with_chumpy(path, mano_arrays(side, seed), ("shapedirs",), ("J_regressor",))


def flame_arrays(seed: int = 2, *, num_vertices: int = 600) -> dict[str, object]:
    """The arrays of a synthetic FLAME 2020 model (keys as in FLAME_NEUTRAL.pkl)."""
    rng = np.random.default_rng(seed)
    segments = 20
    verts, faces = _tube(num_vertices, segments, rng, top=0.1, bottom=-0.15, radius=0.08)
    reg, weights = _rig(verts, 5, segments, rng)
    return {
        "f": faces.astype(np.uint32),
        "J_regressor": reg,
        "kintree_table": _kintree(FLAME_PARENTS),
        "J": reg @ verts,
        "weights": weights,
        "posedirs": 1e-3 * rng.standard_normal((num_vertices, 3, 36)),
        "v_template": verts,
        "shapedirs": _smooth_dirs(verts, 400, 0.005, rng).astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_flame(folder: Path, *, seed: int = 2, num_vertices: int = 600) -> Path:
    """Write FLAME_NEUTRAL.pkl (chumpy arrays), flame_static_embedding.pkl and flame_dynamic_embedding.npy."""
    folder = Path(folder)
    data = flame_arrays(seed, num_vertices=num_vertices)
    path = _dump_with_chumpy(
        folder / "FLAME_NEUTRAL.pkl", data, ("shapedirs", "v_template", "posedirs"), ("J_regressor",)
    )
    rng = np.random.default_rng(seed + 10)
    nf = len(data["f"])  # type: ignore[arg-type]
    static = {
        "lmk_face_idx": rng.integers(0, nf, size=51).astype(np.int64),
        "lmk_b_coords": rng.dirichlet(np.ones(3), size=51),
    }
    with open(folder / "flame_static_embedding.pkl", "wb") as fh:
        pickle.dump(static, fh, protocol=2)
    dynamic = np.empty((), dtype=object)
    dynamic[()] = {
        "lmk_face_idx": rng.integers(0, nf, size=(79, 17)).astype(np.int64),
        "lmk_b_coords": rng.dirichlet(np.ones(3), size=(79, 17)),
    }
    np.save(folder / "flame_dynamic_embedding.npy", dynamic, allow_pickle=True)
    return path


def write_body_models_tree(root: Path) -> Path:
    """The standard layout: root/smplx/SMPLX_NEUTRAL.npz, root/mano/MANO_{RIGHT,LEFT}.pkl, root/flame/…"""
    root = Path(root)
    write_smplx(root / "smplx")
    write_mano(root / "mano", "right")
    write_mano(root / "mano", "left")
    write_flame(root / "flame")
    return root
