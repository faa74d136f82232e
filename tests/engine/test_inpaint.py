"""Inpainting samplers against a correlated Gaussian with a closed-form score (DPoserComp, the optimisation,
is tested with the same Gaussian in tests/tasks/test_complete.py).

For data N(μ, Σ) the noised marginal is N(αμ, α²Σ + σ²I), so ε(x, t) = σ(α²Σ + σ²I)⁻¹(x − αμ) exactly, and
the right answer of a completion is the Gaussian conditional p(x_m | x_o = y) — an independent ground truth.
"""

import pytest
import torch

from dposer_cli.core.config import SDEConfig
from dposer_cli.engine import inpaint as ip
from dposer_cli.engine.sde import append_dims, build_sde

D = 4
SDE = build_sde(SDEConfig())
_g = torch.Generator().manual_seed(0)
_A = torch.randn(D, D, generator=_g)
SIGMA = _A @ _A.T / D + 0.1 * torch.eye(D)
MU = torch.tensor([0.5, -0.3, 0.2, 0.0])
OBS = torch.tensor([True, True, False, False])
Y = torch.tensor([1.0, -1.0, float("nan"), float("nan")])  # masked entries of y are never read


class CountingEps:
    """Exact ε of N(MU, SIGMA); counts calls (= network evaluations)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert t.shape == x.shape[:-1], "per-sample time must cover every leading dim"
        alpha, std = SDE.marginal(t)
        a, s = append_dims(alpha, x.ndim + 1), append_dims(std, x.ndim + 1)
        cov = a**2 * SIGMA + s**2 * torch.eye(D)
        r = (x - a[..., 0] * MU).unsqueeze(-1)
        return s[..., 0] * torch.linalg.solve(cov, r).squeeze(-1)


def conditional() -> tuple[torch.Tensor, torch.Tensor]:
    o, m = OBS, ~OBS
    y = Y[o]
    mean = MU[m] + SIGMA[m][:, o] @ torch.linalg.solve(SIGMA[o][:, o], y - MU[o])
    cov = SIGMA[m][:, m] - SIGMA[m][:, o] @ torch.linalg.solve(SIGMA[o][:, o], SIGMA[o][:, m])
    return mean, cov.diagonal().sqrt()


def test_score_sde_inpaint_conditions_on_observation():
    g = torch.Generator().manual_seed(6)
    x = SDE.prior_sampling((1000, D), g, torch.device("cpu"))
    eps = CountingEps()
    out = ip.score_sde_inpaint(eps, x, OBS, Y, sde=SDE, steps=200, generator=g)
    mean, _ = conditional()
    assert eps.calls == 200
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, OBS].mean(0), Y[OBS], atol=0.05, rtol=0)
    # replacement is a biased sampler, but it must move the masked dims from p(x_m) towards p(x_m | y)
    assert ((out[:, ~OBS].mean(0) - mean).abs() < (MU[~OBS] - mean).abs()).all()


@pytest.mark.parametrize("name", ["dps", "mcg"])
def test_guided_inpaint_is_finite_and_conditions_on_observation(name):
    g = torch.Generator().manual_seed(7)
    x = SDE.prior_sampling((500, 2, D), g, torch.device("cpu"))  # (N, H, D) layout
    eps = CountingEps()
    out = ip.INPAINTERS[name](eps, x, OBS, Y, sde=SDE, steps=150, generator=g)
    assert out.shape == (500, 2, D) and torch.isfinite(out).all()
    assert eps.calls == 150
    flat = out.reshape(-1, D)
    mean, _ = conditional()
    # the masked dims move the way the correlation says (sign of the conditional shift)
    shift = flat[:, ~OBS].mean(0) - MU[~OBS]
    assert (torch.sign(shift) == torch.sign(mean - MU[~OBS])).all()


def test_guided_inpaint_official_variant_ignores_network_jacobian():
    """through_network=False reproduces the official BP solver: the guidance gradient has no masked entries."""
    x = SDE.prior_sampling((50, D), torch.Generator().manual_seed(8), torch.device("cpu"))

    def one_step(step_size: float, through: bool) -> torch.Tensor:
        return ip.guided_inpaint(
            CountingEps(),
            x,
            OBS,
            Y,
            sde=SDE,
            steps=1,
            step_size=step_size,
            generator=torch.Generator().manual_seed(9),
            through_network=through,
        )

    plain = one_step(0.0, True)
    official, dps = one_step(1.0, False) - plain, one_step(1.0, True) - plain
    assert torch.equal(official[:, ~OBS], torch.zeros(50, 2)) and official[:, OBS].abs().min() > 0
    assert dps[:, ~OBS].abs().max() > 1e-3  # real DPS moves masked dims through ∂ε̂/∂x
