"""Baseline priors: the GMM's EM against known mixtures and scipy densities; none / l2 values; the prior interface."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.engine.baselines import GaussianMixturePrior, L2Prior, NoPrior
from dposer_cli.engine.priors import build_prior


def _mixture(n: int = 3000, seed: int = 0, with_labels: bool = False):
    """Two well-separated 45-d Gaussians (hand width) with weights 0.3 / 0.7."""
    rng = np.random.default_rng(seed)
    means = np.stack([np.full(45, -1.0), np.full(45, 1.5)])
    a = rng.normal(size=(45, 45)) * 0.05
    cov = a @ a.T + 0.04 * np.eye(45)
    labels = rng.random(n) < 0.3
    x = np.where(
        labels[:, None], rng.multivariate_normal(means[0], cov, n), rng.multivariate_normal(means[1], cov, n)
    )
    if with_labels:
        return torch.as_tensor(x), labels
    return torch.as_tensor(x), means, cov


def test_em_recovers_weights_means_and_covariances():
    x, means, _ = _mixture()
    _, labels = _mixture(with_labels=True)
    gmm = GaussianMixturePrior(Part.hand, 2, seed=1).fit(x)
    order = torch.argsort(gmm.means_[:, 0])
    assert gmm.converged_
    np.testing.assert_allclose(gmm.weights_[order].numpy(), [0.3, 0.7], atol=0.03)
    np.testing.assert_allclose(gmm.means_[order].numpy(), means, atol=0.03)
    # well-separated clusters: EM's estimates are the per-cluster sample statistics (independent numpy)
    for k, members in enumerate((labels, ~labels)):
        xs = x.numpy()[members]
        np.testing.assert_allclose(gmm.weights_[order[k]].item(), members.mean(), atol=1e-6)
        np.testing.assert_allclose(gmm.means_[order[k]].numpy(), xs.mean(0), atol=1e-6)
        np.testing.assert_allclose(
            gmm.covariances_[order[k]].numpy(),
            np.cov(xs, rowvar=False, bias=True) + 1e-6 * np.eye(45),
            atol=1e-6,
        )
    # the mean pose is the mixture mean
    np.testing.assert_allclose(gmm.mean_pose.numpy(), x.mean(0).numpy(), atol=0.02)


def test_score_samples_and_loss_match_scipy():
    x, _, _ = _mixture(800)
    gmm = GaussianMixturePrior(Part.hand, 3, seed=0).fit(x)
    q = x[:20]
    w, mu, cov = gmm.weights_.numpy(), gmm.means_.numpy(), gmm.covariances_.numpy()
    logs = np.stack(
        [np.log(w[k]) + multivariate_normal(mu[k], cov[k]).logpdf(q.numpy()) for k in range(3)], 1
    )
    np.testing.assert_allclose(gmm.score_samples(q).numpy(), np.logaddexp.reduce(logs, axis=1), rtol=1e-9)
    assert gmm.score(q) == pytest.approx(float(np.logaddexp.reduce(logs, axis=1).mean()))
    # SMPLify max-mixture loss: min_k −log(w_k N_k) without the 2π constant
    const = 0.5 * 45 * np.log(2 * np.pi)
    np.testing.assert_allclose(gmm.loss(q.float(), 0.1).double().numpy(), (-logs - const).min(1), rtol=1e-4)
    np.testing.assert_allclose(gmm.predict_proba(q).sum(1).numpy(), 1.0)


def test_loss_is_differentiable_and_has_the_prior_interface():
    x, _, _ = _mixture(500)
    gmm = build_prior("gmm", Part.hand, train=x, n_components=2)
    pose = torch.zeros(4, 45, requires_grad=True)
    value = gmm.loss(pose, 0.1, weighting="snr2", generator=None)
    assert value.shape == (4,) and value.dtype == torch.float32
    value.sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0
    assert gmm.nfe == 0 and gmm.dim == 45 and gmm.part is Part.hand and "gmm" in gmm.source
    # normalize / denormalize are a shift by the mean pose: denormalize(0) is the mean pose
    np.testing.assert_allclose(gmm.denormalize(torch.zeros(45)).numpy(), gmm.mean_pose.numpy())
    np.testing.assert_allclose(
        gmm.loss(gmm.normalize(x[:3].float()), normalized=True).numpy(),
        gmm.loss(x[:3].float()).numpy(),
        rtol=1e-5,
    )


def test_samples_follow_the_mixture():
    x, _, _ = _mixture()
    gmm = GaussianMixturePrior(Part.hand, 2, seed=0).fit(x)
    s = gmm.sample(4000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4000, 45) and s.dtype == torch.float32
    np.testing.assert_allclose(s.double().mean(0).numpy(), x.mean(0).numpy(), atol=0.06)
    again = gmm.sample(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_conditional_completion_matches_the_closed_form_for_one_gaussian():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(63, 63)) * 0.1
    cov = a @ a.T + 0.01 * np.eye(63)
    x = torch.as_tensor(rng.multivariate_normal(np.zeros(63), cov, 4000))
    gmm = GaussianMixturePrior(Part.body, 1).fit(x)
    observed = torch.ones(63, dtype=torch.bool)
    observed[:12] = False
    pose = x[:2].float()
    out = gmm.complete(pose, observed, hypo=3000, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 3000, 63)
    assert torch.equal(out[:, :, 12:], pose[:, None, 12:].expand(-1, 3000, -1))  # visible dims untouched
    s = gmm.covariances_[0].numpy()
    mu = gmm.means_[0].numpy()
    expected = mu[:12] + s[:12, 12:] @ np.linalg.solve(s[12:, 12:], (pose[0, 12:].double().numpy() - mu[12:]))
    np.testing.assert_allclose(out[0, :, :12].double().mean(0).numpy(), expected, atol=0.03)


def test_none_and_l2():
    pose = torch.tensor([[1.0, -2.0] + [0.0] * 61])
    assert NoPrior(Part.body).loss(pose).item() == 0.0
    assert L2Prior(Part.body).loss(pose, 0.3).item() == pytest.approx(5.0)
    observed = torch.ones(63, dtype=torch.bool)
    observed[0] = False
    done = L2Prior(Part.body).complete(pose, observed, hypo=2)
    assert done.shape == (1, 2, 63) and done[0, :, 0].abs().sum() == 0 and done[0, 0, 1] == -2.0
    with pytest.raises(InputError, match="cannot complete"):
        NoPrior(Part.body).complete(pose, observed)


def test_bad_inputs_raise_input_errors():
    with pytest.raises(InputError, match="expected \\(N, 45\\)"):
        GaussianMixturePrior(Part.hand, 2).fit(torch.zeros(10, 63))
    with pytest.raises(InputError, match="3 training poses for 8 components"):
        GaussianMixturePrior(Part.hand, 8).fit(torch.zeros(3, 45))
    with pytest.raises(InputError, match="did you mean 'gmm'"):
        build_prior("gnm", Part.body)
    with pytest.raises(InputError, match="needs training poses"):
        build_prior("gmm", Part.body)
