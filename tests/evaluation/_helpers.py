"""Requests and an independent (numpy) similarity Procrustes for the evaluation tests."""

import numpy as np

from dposer_cli.evaluation import BenchmarkRequest


def req(tmp_path, name, **kw) -> BenchmarkRequest:
    return BenchmarkRequest(name=name, device="cpu", out=tmp_path / f"{name}.json", **kw)


def np_procrustes(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    mp, mg = p.mean(0), g.mean(0)
    x, y = p - mp, g - mg
    u, s, vt = np.linalg.svd(x.T @ y)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1, 1, d]) @ u.T
    scale = (s * np.array([1, 1, d])).sum() / (x**2).sum()
    return scale * x @ rot.T + mg
