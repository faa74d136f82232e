"""Samplers and the DPoser loss against the closed-form score of Gaussian data (independent ground truth)."""

import pytest
import torch

from dposer_cli.core.config import SDEConfig
from dposer_cli.engine import samplers as smp
from dposer_cli.engine.loss import dposer_loss, dsm_loss, time_schedule
from dposer_cli.engine.sde import append_dims, build_sde

MU, S = 0.7, 0.4


def gaussian_eps(sde, mu=MU, s=S):
    """Exact ε(x, t) for data N(mu, s² I): ε = σ (x − α mu) / (α² s² + σ²)."""

    def eps(x, t):
        alpha, std = sde.marginal(t)
        a, sd = append_dims(alpha, x.ndim), append_dims(std, x.ndim)
        return sd * (x - a * mu) / (a**2 * s**2 + sd**2)

    return eps


@pytest.mark.parametrize("kind", ["subvp", "vp"])
@pytest.mark.parametrize("name,steps", [("em", 1000), ("ddim", 200), ("dpm2m", 25), ("dpm2m-sde", 50)])
def test_sampler_recovers_gaussian_mean_and_std(kind, name, steps):
    sde = build_sde(SDEConfig(kind=kind))
    g = torch.Generator().manual_seed(0)
    x = sde.prior_sampling((4000, 3), g, torch.device("cpu"))
    out = smp.SAMPLERS[name](gaussian_eps(sde), x, sde=sde, steps=steps, generator=g)
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(S, rel=0.04)


def test_fast_sampler_matches_em_in_distribution():
    sde = build_sde(SDEConfig())
    g = torch.Generator().manual_seed(1)
    x = sde.prior_sampling((4000, 2), g, torch.device("cpu"))
    em = smp.euler_maruyama(gaussian_eps(sde), x, sde=sde, steps=1000, generator=g)
    fast = smp.dpm_solver_2m(gaussian_eps(sde), x, sde=sde, steps=25)
    # compare quantiles of the two sample sets
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert torch.allclose(torch.quantile(em[:, 0], q), torch.quantile(fast[:, 0], q), atol=0.05)
    sde_fast = smp.dpm_solver_2m_sde(gaussian_eps(sde), x, sde=sde, steps=50, generator=g)
    assert torch.allclose(torch.quantile(em[:, 0], q), torch.quantile(sde_fast[:, 0], q), atol=0.05)


def test_sde_solver_is_exact_first_step_of_the_reverse_sde():
    """One SDE-DPM-Solver++ step (first order) is the exact solution of the reverse SDE with x̂0 frozen:
    mean σ_n/σ e^{-h} x + α_n (1 − e^{-2h}) x̂0 and noise σ_n √(1 − e^{-2h}) z (Lu et al. 2022)."""
    sde = build_sde(SDEConfig())
    eps = gaussian_eps(sde)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    seen = []
    out = smp.dpm_solver_2m_sde(
        eps, x, sde=sde, steps=2, generator=torch.Generator().manual_seed(9), callback=seen.append
    )
    ts = smp.logsnr_grid(sde, 2, 1e-3, x.device)
    a, s = sde.marginal(ts)
    lam = torch.log(a / s)
    h0, h1 = lam[1] - lam[0], lam[2] - lam[1]
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    x1 = s[1] / s[0] * torch.exp(-h0) * x + a[1] * (1 - torch.exp(-2 * h0)) * seen[0].denoised
    x1 = x1 + s[1] * torch.sqrt(1 - torch.exp(-2 * h0)) * z
    torch.testing.assert_close(seen[1].x, x1)
    x2 = (
        s[2] / s[1] * torch.exp(-h1) * x1 + a[2] * (1 - torch.exp(-2 * h1)) * seen[1].denoised
    )  # noise-free last
    torch.testing.assert_close(out, x2)


@pytest.mark.parametrize("steps", [5, 6, 8])
def test_dpm2m_does_not_extrapolate_from_t_T(steps):
    """An ε error at t = T only (where x̂0 = (x − σε̂)/α carries it ×150) reaches the DPM-Solver++(2M) result
    no more than it reaches DDIM's: the multistep extrapolation never uses the x̂0 of t = T. (Using it, as the
    sampler did before, multiplied the error by e^h/2 at the second step: ×7 over DDIM at 6 steps.)"""
    sde = build_sde(SDEConfig())
    eps = gaussian_eps(sde)

    def bad(x, t):
        return eps(x, t) + 0.05 * append_dims((t >= sde.T).to(x.dtype), x.ndim)

    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
    dev = {}
    for name in ("ddim", "dpm2m"):
        fn = smp.SAMPLERS[name]
        dev[name] = (fn(bad, x, sde=sde, steps=steps) - fn(eps, x, sde=sde, steps=steps)).abs().mean()
    assert dev["dpm2m"] <= 2 * dev["ddim"], dev


def test_samplers_agree_for_pose_and_motion_layouts():
    sde = build_sde(SDEConfig())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, 4, generator=g)
    for name in smp.SAMPLERS:
        seq = smp.SAMPLERS[name](
            gaussian_eps(sde), x, sde=sde, steps=20, generator=torch.Generator().manual_seed(3)
        )
        flat = smp.SAMPLERS[name](
            gaussian_eps(sde), x.reshape(30, 4), sde=sde, steps=20, generator=torch.Generator().manual_seed(3)
        )
        torch.testing.assert_close(seq.reshape(30, 4), flat, atol=1e-5, rtol=1e-5)


def test_em_is_exact_official_update():
    """One EM step equals the hand-written ScoreSDE predictor update."""
    sde = build_sde(SDEConfig())
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    noise_gen = torch.Generator().manual_seed(5)
    out = smp.euler_maruyama(gaussian_eps(sde), x, sde=sde, steps=1, t_end=1e-3, generator=noise_gen)
    t = torch.ones(3)
    alpha, std = sde.marginal(t)
    score = -gaussian_eps(sde)(x, t) / std[:, None]
    beta = 0.1 + t * 19.9
    g2 = beta * (1 - torch.exp(-2 * 0.1 * t - 19.9 * t**2))
    expected = x + (-0.5 * beta[:, None] * x - g2[:, None] * score) * (-1.0)
    torch.testing.assert_close(out, expected)


def test_dposer_loss_minimised_at_data_mean_and_gradient_is_analytic():
    sde = build_sde(SDEConfig())
    eps = gaussian_eps(sde, mu=0.0, s=1.0)
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(-2, 2, 41)[:, None].expand(41, 3).contiguous()
    noise = torch.randn(2000, 1, 3, generator=g).expand(2000, 41, 3)
    vals = dposer_loss(eps, grid.expand(2000, 41, 3), 0.1, sde=sde, noise=noise).mean(0)
    assert grid[vals.argmin(), 0].abs().item() <= 0.1
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    z = torch.randn(5, 3, generator=g)
    dposer_loss(eps, x, 0.1, sde=sde, noise=z, weighting="snr").sum().backward()
    t = torch.full((5,), 0.1)
    alpha, std = sde.marginal(t)
    xt = alpha[:, None] * x.detach() + std[:, None] * z
    x0hat = (xt - std[:, None] * eps(xt, t)) / alpha[:, None]
    w = 0.5 * torch.sqrt(1 + alpha / std)
    torch.testing.assert_close(x.grad, 2 * w[:, None] * (x.detach() - x0hat))


def test_dsm_loss_zero_noise_error_for_exact_score():
    sde = build_sde(SDEConfig())
    g = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(20000, 2, generator=g)
    exact = dsm_loss(gaussian_eps(sde), x0, sde=sde, generator=g).mean()
    wrong = dsm_loss(
        gaussian_eps(sde, mu=0.0), x0, sde=sde, generator=torch.Generator().manual_seed(0)
    ).mean()
    assert exact < wrong


def test_time_schedule_endpoints():
    assert time_schedule(0, 200, 0.05, 0.15) == pytest.approx(0.1495)
    assert time_schedule(199, 200, 0.05, 0.15) == pytest.approx(0.05)


def test_gaussian_skip_net_with_zero_residual_is_the_exact_unit_gaussian_score():
    """TimeFC(gaussian_skip) with a zeroed output layer gives ε of N(0, I) data exactly."""
    from dposer_cli.engine.nets import TimeFC

    sde = build_sde(SDEConfig())
    net = TimeFC(3, 3, 32, 16, scale_by_sigma=False, gaussian_skip=True).eval()
    torch.nn.init.zeros_(net.post_dense.weight)
    torch.nn.init.zeros_(net.post_dense.bias)
    x = torch.randn(7, 3)
    t = torch.rand(7) * 0.98 + 0.01
    with torch.no_grad():
        got = net(x, sde.label(t))
    torch.testing.assert_close(got, gaussian_eps(sde, mu=0.0, s=1.0)(x, t), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(smp.SAMPLERS))
def test_callback_sees_every_step_and_changes_nothing(name):
    """The rich callback: one SamplerStep per step (i, steps, t, x, x̂0); samples are bit-identical with it."""
    sde = build_sde(SDEConfig())
    eps = gaussian_eps(sde)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    seen = []
    with_cb = smp.SAMPLERS[name](
        eps, x, sde=sde, steps=12, generator=torch.Generator().manual_seed(1), callback=seen.append
    )
    plain = smp.SAMPLERS[name](eps, x, sde=sde, steps=12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(with_cb, plain)
    assert [s.i for s in seen] == list(range(12)) and all(s.steps == 12 for s in seen)
    assert torch.equal(seen[0].x, x) and seen[0].t.item() == pytest.approx(1.0)
    times = torch.stack([s.t for s in seen])
    assert (times[1:] < times[:-1]).all()
    for s in seen:  # x̂0 is the Tweedie estimate of the step's own state and time
        alpha, std = sde.marginal(s.t.expand(5))
        expected = (s.x - std[:, None] * eps(s.x, s.t.expand(5))) / alpha[:, None]
        torch.testing.assert_close(s.denoised, expected, rtol=1e-4, atol=1e-4)


def _em_reference(eps_fn, x, sde, steps, t_end, generator):
    """The Euler–Maruyama loop as it was written before the callback carried states (the official update)."""
    ts = torch.linspace(sde.T, t_end, steps)
    dt = -1.0 / steps
    x_mean = x
    for i in range(steps):
        t = torch.full((x.shape[0],), float(ts[i]))
        alpha, std = sde.marginal(t)
        score = -eps_fn(x, t) / append_dims(std, x.ndim)
        f, g = sde.sde(x, t)
        g = append_dims(g, x.ndim)
        x_mean = x + (f - g**2 * score) * dt
        x = x_mean + g * (-dt) ** 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x_mean


@pytest.mark.slow
def test_em_1000_on_official_checkpoint_is_bit_identical(tmp_path, shared_data):
    """EM-1000 through DPoserPrior.sample (with and without a callback) equals the reference loop bit for bit."""
    from dposer_cli.core.parts import Part
    from dposer_cli.engine.prior import DPoserPrior
    from tests._fixtures.checkpoints import write_official_ckpt

    ckpt = write_official_ckpt(tmp_path / "last.ckpt", Part.hand)
    prior = DPoserPrior.from_checkpoint(ckpt, Part.hand, normalizer=shared_data / "official")
    g = torch.Generator().manual_seed(7)
    x = prior.sde.prior_sampling((3, 45), g, torch.device("cpu"))
    expected = prior.denormalize(_em_reference(prior.eps, x, prior.sde, 1000, 1e-3, g))
    steps = []
    for callback in (None, steps.append):
        got = prior.sample(
            3, sampler="em", steps=1000, generator=torch.Generator().manual_seed(7), callback=callback
        )
        assert torch.equal(got, expected)
    assert len(steps) == 1000 and steps[0].x.shape == (3, 45)
    torch.testing.assert_close(steps[0].x, prior.denormalize(x))  # handed over in raw pose space
