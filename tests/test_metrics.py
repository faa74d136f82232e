"""Metrics against independent computations: loops, closed forms, hand-computed sets, known transforms."""

import math

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError
from scipy import linalg
from scipy.spatial.transform import Rotation

from dposer_cli import metrics
from dposer_cli.core.errors import InputError
from dposer_cli.metrics import apd, dnn, fid, fid_from_stats, gaussian_stats, mpjpe, pa_mpjpe, prdc

GEN = torch.Generator().manual_seed(0)


def _randn(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN, dtype=torch.float64)


def _rigid_align_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample reference in the I2L-MeshNet / official `rigid_align` form (negate s[-1] on reflection)."""
    n = len(a)
    ca, cb = a.mean(0), b.mean(0)
    h = (a - ca).T @ (b - cb) / n
    u, s, vt = np.linalg.svd(h)
    r = vt.T @ u.T
    if np.linalg.det(r) < 0:
        s[-1], vt[2] = -s[-1], -vt[2]
        r = vt.T @ u.T
    c = s.sum() / np.var(a, axis=0).sum()
    t = cb - c * r @ ca
    return (c * r @ a.T).T + t


# ---------------------------------------------------------------------------------------------------- joints
def test_pa_mpjpe_recovers_a_known_similarity_transform():
    x = _randn(6, 22, 3)
    rot = torch.as_tensor(Rotation.random(6, random_state=1).as_matrix())
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 7.0], dtype=torch.float64)
    y = scale[:, None, None] * x @ rot.transpose(-1, -2) + _randn(6, 1, 3)
    assert pa_mpjpe(y, x).abs().max() < 1e-10
    assert (mpjpe(y, x) > 0.1).all()


def test_procrustes_matches_the_numpy_reference_including_reflections():
    a, b = _randn(8, 15, 3), _randn(8, 15, 3)
    b[:4] = a[:4] * torch.tensor([-1.0, 1.0, 1.0]) + 0.01 * _randn(4, 15, 3)  # mirror images: needs the fix
    ours = metrics.procrustes_align(a, b).numpy()
    for i in range(8):
        ref = _rigid_align_numpy(a[i].numpy(), b[i].numpy())
        np.testing.assert_allclose(ours[i], ref, atol=1e-10)
    err = pa_mpjpe(a, b).numpy()
    loop = [
        np.linalg.norm(_rigid_align_numpy(a[i].numpy(), b[i].numpy()) - b[i].numpy(), axis=1).mean()
        for i in range(8)
    ]
    np.testing.assert_allclose(err, loop, atol=1e-10)


def test_procrustes_rotations_are_proper_and_batched_over_any_leading_dims():
    a, b = _randn(2, 3, 10, 3), _randn(2, 3, 10, 3)
    flat = pa_mpjpe(a.reshape(6, 10, 3), b.reshape(6, 10, 3))
    torch.testing.assert_close(pa_mpjpe(a, b), flat.reshape(2, 3))
    assert pa_mpjpe(a.float(), b.float()).dtype == torch.float32


def test_procrustes_without_spread_lands_on_the_target_centroid():
    # a single joint, or a collapsed prediction: the official form gives scale 0 (0 / var or tr(R·0) / var)
    one_p, one_g = _randn(3, 1, 3), _randn(3, 1, 3)
    torch.testing.assert_close(metrics.procrustes_align(one_p, one_g), one_g)
    flat, g = torch.zeros(2, 5, 3, dtype=torch.float64), _randn(2, 5, 3)
    torch.testing.assert_close(metrics.procrustes_align(flat, g), g.mean(1, keepdim=True).expand(2, 5, 3))
    p = _randn(2, 5, 3)
    torch.testing.assert_close(metrics.procrustes_align(p, flat + 1.0), flat + 1.0)


def test_mpjpe_plain_and_root_aligned_against_numpy():
    p, g = _randn(4, 5, 3), _randn(4, 5, 3)
    want = np.linalg.norm(p.numpy() - g.numpy(), axis=-1).mean(-1)
    np.testing.assert_allclose(mpjpe(p, g).numpy(), want)
    shifted = g + torch.tensor([1.0, -2.0, 3.0])
    assert mpjpe(shifted, g, align="root").abs().max() < 1e-12
    assert mpjpe(np.zeros((2, 3, 3)), np.ones((2, 3, 3))).shape == (2,)  # numpy input accepted


def test_mpjpe_of_frame_minor_points_equals_the_contiguous_value_to_the_bit():
    """Sparse skinning returns vertices frame-minor (strides (1, 3B, B)); the error is the same number."""
    a, b = _randn(3 * 50, 7).T.reshape(7, 50, 3), _randn(3 * 50, 7).T.reshape(7, 50, 3)
    assert a.stride(-1) != 1
    assert torch.equal(mpjpe(a, b), mpjpe(a.contiguous(), b.contiguous()))


def test_mpjpe_rejects_bad_input():
    # with the jaxtyping test hook installed, the annotation rejects the shapes before our own check does
    with pytest.raises((InputError, TypeCheckError)):
        mpjpe(torch.zeros(2, 5, 3), torch.zeros(2, 4, 3))
    with pytest.raises(InputError, match="unknown alignment"):
        mpjpe(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), align="pelvis")


def test_apd_matches_a_brute_force_loop():
    x = _randn(2, 7, 4, 3)
    got = apd(x)
    for b in range(2):
        total = 0.0
        for i in range(7):
            for j in range(7):
                if i != j:
                    total += torch.linalg.vector_norm(x[b, i] - x[b, j], dim=-1).mean().item()
        assert got[b].item() == pytest.approx(total / 42, rel=1e-12)


def test_apd_chunking_gives_the_same_value(monkeypatch):
    x = _randn(9, 5, 3)
    full = apd(x)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7)
    torch.testing.assert_close(apd(x), full)
    with pytest.raises(InputError, match="at least 2"):
        apd(x[:1])


# ---------------------------------------------------------------------------------------------------- FID
def test_fid_of_identical_statistics_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 6))
    mu, sigma = gaussian_stats(x)
    assert abs(fid_from_stats(mu, sigma, mu, sigma)) < 1e-8
    assert abs(fid(x, mu=mu, sigma=sigma)) < 1e-8


def test_fid_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert fid_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-9)


def test_fid_against_official_body_statistics_matches_an_eigenvalue_formula(shared_data):
    with np.load(shared_data / "official/data/body_data/version1/statistics.npz") as st:
        mu, sigma = st["mu"], st["sigma"]
    with np.load(shared_data / "poses/body_reference_train.npz") as d:
        x = d["poses"][:2000]
    got = fid(x, mu=mu, sigma=sigma)
    m, s = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
    # tr √(Σ1Σ2) = Σ √λ_i, λ_i the (real, non-negative) eigenvalues of Σ1Σ2
    lam = np.clip(linalg.eigvals(s @ sigma).real, 0, None)
    want = ((m - mu) ** 2).sum() + np.trace(s) + np.trace(sigma) - 2 * np.sqrt(lam).sum()
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert 0 < got < 1.0  # real poses against the statistics of their own source


def test_fid_handles_singular_covariances_and_rejects_mismatch():
    sigma = np.zeros((3, 3))
    sigma[0, 0] = 1.0
    assert math.isfinite(fid_from_stats(np.zeros(3), sigma, np.ones(3), sigma))
    with pytest.raises(InputError, match="dimension 4"):
        fid(np.zeros((10, 4)), mu=np.zeros(3), sigma=np.eye(3))


# ---------------------------------------------------------------------------------------------------- PRDC
def _line(*xs: float) -> torch.Tensor:
    return torch.tensor([[x, 0.0] for x in xs], dtype=torch.float64)


def test_prdc_on_a_hand_computed_set():
    # k=1. real radii: 0.3→0.7, 1→0.7, 10→1, 11→1; fake radii: 0.2→0.2, 0.4→0.2, 50→0.5, 50.5→0.5.
    # precision: fakes 0.2, 0.4 lie in the ball of real 0.3 → 2/4; density: 0.2 in 1 ball, 0.4 in 2 → 3/4;
    # recall: only real 0.3 is within a fake ball (0.2's, distance 0.1 < 0.2) → 1/4;
    # coverage: reals 0.3 and 1 have a fake closer than their radius → 2/4.
    out = prdc(_line(0.3, 1, 10, 11), _line(0.2, 0.4, 50, 50.5), k=1)
    assert out == pytest.approx({"precision": 0.5, "recall": 0.25, "density": 0.75, "coverage": 0.5})


def _prdc_loop(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    def radii(x):
        return np.array([np.sort(np.linalg.norm(x - p, axis=1))[k] for p in x])

    rr, fr = radii(real), radii(fake)
    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    return {
        "precision": np.mean([any(d[i, j] < rr[i] for i in range(len(real))) for j in range(len(fake))]),
        "recall": np.mean([any(d[i, j] < fr[j] for j in range(len(fake))) for i in range(len(real))]),
        "density": np.mean([sum(d[i, j] < rr[i] for i in range(len(real))) for j in range(len(fake))]) / k,
        "coverage": np.mean([d[i].min() < rr[i] for i in range(len(real))]),
    }


def test_prdc_matches_a_loop_and_is_chunk_independent(monkeypatch):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(40, 4)), rng.normal(0.3, 1.2, size=(55, 4))
    want = _prdc_loop(real, fake, 3)
    assert prdc(real, fake, k=3) == pytest.approx(want)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # forces blocks of one or two rows
    assert prdc(torch.as_tensor(real), torch.as_tensor(fake), k=3) == pytest.approx(want)
    # recall(real, fake) is precision(fake, real) by definition
    assert prdc(fake, real, k=3)["precision"] == pytest.approx(want["recall"])


def test_prdc_rejects_too_few_samples():
    with pytest.raises(InputError, match="more than 3"):
        prdc(np.zeros((3, 2)), np.zeros((10, 2)))


# ---------------------------------------------------------------------------------------------------- dNN
def test_dnn_absolute_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(13, 6)), rng.normal(size=(29, 6))
    want = np.mean([np.linalg.norm(t - x, axis=1).min() for x in s])
    assert dnn(s, t, measure="absolute") == pytest.approx(want)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 20)
    assert dnn(s, t, measure="absolute") == pytest.approx(want)


def test_dnn_rotation_is_the_summed_geodesic_angle():
    train = np.zeros((3, 6))  # two joints at identity
    train[1, 3:] = [0.0, 0.0, 3.0]
    sample = np.zeros((1, 6))
    sample[0, :3] = [0.0, 0.4, 0.0]  # 0.4 rad from identity on joint 0
    sample[0, 3:] = [0.0, 0.0, 2.5]  # 0.5 rad from train[1] on joint 1, 2.5 from identity
    assert dnn(sample, train) == pytest.approx(0.4 + 0.5)
    # the same rotation written two ways (θ about z, and 2π − θ about −z) is at distance 0
    theta = 2.0
    a = np.array([[0.0, 0.0, theta]])
    b = np.array([[0.0, 0.0, -(2 * math.pi - theta)]])
    assert dnn(a, b) == pytest.approx(0.0, abs=1e-5)


def test_dnn_rotation_matches_scipy_geodesics_and_chunking(monkeypatch):
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(7, 9)), rng.normal(size=(11, 9))
    rs, rt = Rotation.from_rotvec(s.reshape(-1, 3)), Rotation.from_rotvec(t.reshape(-1, 3))
    ang = np.zeros((7, 11))
    for i in range(7):
        for j in range(11):
            ang[i, j] = sum((rs[3 * i + q].inv() * rt[3 * j + q]).magnitude() for q in range(3))
    want = ang.min(1).mean()
    assert dnn(s, t) == pytest.approx(want, rel=1e-6)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 10)
    assert dnn(s, t) == pytest.approx(want, rel=1e-6)
    with pytest.raises(InputError, match="unknown dNN measure"):
        dnn(s, t, measure="cosine")
