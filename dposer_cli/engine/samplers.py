"""Samplers as small pure functions (k-diffusion style) over an ε-model `eps_fn(x, t) -> ε̂`.

Every sampler has the signature `(eps_fn, x, *, sde, steps, t_end, generator, callback)` and returns
the final sample; the noise source and the schedule are explicit arguments, never hidden state.
`x` may be (B, D) or (B, T, D): per-sample times are broadcast with `append_dims`.

`callback`, when given, is called once per step, before the step's update, with a `SamplerStep`: the step
index `i` of `steps`, the grid time `t`, the state `x` at that time and the denoised estimate
x̂0 = (x − σ(t) ε̂)/α(t) from the step's own network evaluation (no extra NFE; k-diffusion's `callback`
dict as a dataclass). Values are in the sampler's (normalised) space; it never alters the samples.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from dposer_cli.engine.sde import append_dims

EpsFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler hands its callback at step `i` (0-based) of `steps`."""

    i: int
    steps: int
    t: Float[Tensor, ""]  # grid time of this step (0-dim tensor on the sampler's device: no host sync)
    x: Tensor  # the state x_t the step starts from, same shape as the sampler's `x`
    denoised: Tensor  # x̂0 estimated from x_t with this step's network evaluation


Callback = Callable[[SamplerStep], None] | None


def _tvec(t: Tensor | float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


@torch.no_grad()
def euler_maruyama(eps_fn: EpsFn, x: Tensor, *, sde, steps: int = 1000, t_end: float = 1e-3,
                   generator: torch.Generator | None = None, callback: Callback = None) -> Tensor:
    """Official PC sampler, predictor Euler–Maruyama, no corrector, noise-free last step (spec §5).

    Grid `linspace(1, t_end, steps)` with dt = −1/steps (ScoreSDE's convention, not the grid spacing).
    Returns the mean of the last step. NFE = steps.
    """
    ts = torch.linspace(sde.T, t_end, steps, device=x.device)
    dt = -1.0 / steps
    x_mean = x
    for i in range(steps):
        t = _tvec(ts[i], x)
        alpha, std = sde.marginal(t)
        eps = eps_fn(x, t)
        if callback is not None:
            denoised = (x - append_dims(std, x.ndim) * eps) / append_dims(alpha, x.ndim)
            callback(SamplerStep(i, steps, ts[i], x, denoised))
        score = -eps / append_dims(std, x.ndim)
        f, g = sde.sde(x, t)
        g = append_dims(g, x.ndim)
        x_mean = x + (f - g**2 * score) * dt
        x = x_mean + g * (-dt) ** 0.5 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_mean


def _x0(eps_fn: EpsFn, x: Tensor, t: Tensor, sde) -> tuple[Tensor, Tensor]:
    alpha, std = sde.marginal(t)
    eps = eps_fn(x, t)
    return (x - append_dims(std, x.ndim) * eps) / append_dims(alpha, x.ndim), eps


def logsnr_grid(sde, steps: int, t_end: float, device: torch.device) -> Tensor:
    """Times 1 → t_end spaced uniformly in λ = log(α/σ) (inverted on a dense grid)."""
    dense = torch.linspace(sde.T, t_end, 20001, device=device, dtype=torch.float64)
    alpha, std = sde.marginal(dense)
    lam = torch.log(alpha) - torch.log(std)
    targets = torch.linspace(float(lam[0]), float(lam[-1]), steps + 1, device=device, dtype=torch.float64)
    idx = torch.searchsorted(lam, targets).clamp(1, dense.numel() - 1)
    lo, hi = lam[idx - 1], lam[idx]
    w = ((targets - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    ts = dense[idx - 1] + w * (dense[idx] - dense[idx - 1])
    ts[0], ts[-1] = sde.T, t_end
    return ts.float()


@torch.no_grad()
def ddim(eps_fn: EpsFn, x: Tensor, *, sde, steps: int = 50, t_end: float = 1e-3,
         generator: torch.Generator | None = None, callback: Callback = None) -> Tensor:
    """Deterministic DDIM (η = 0): first-order probability-flow solver in (x/α, σ/α). NFE = steps."""
    ts = logsnr_grid(sde, steps, t_end, x.device)
    for i in range(steps):
        t, t_next = _tvec(ts[i], x), _tvec(ts[i + 1], x)
        x0, eps = _x0(eps_fn, x, t, sde)
        if callback is not None:
            callback(SamplerStep(i, steps, ts[i], x, x0))
        a_n, s_n = sde.marginal(t_next)
        x = append_dims(a_n, x.ndim) * x0 + append_dims(s_n, x.ndim) * eps
    return x


@torch.no_grad()
def dpm_solver_2m(eps_fn: EpsFn, x: Tensor, *, sde, steps: int = 25, t_end: float = 1e-3,
                  generator: torch.Generator | None = None, callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep, data prediction, uniform-λ grid.

    Returns the denoised estimate x̂0 at the last grid time. NFE = steps.
    """
    ts = logsnr_grid(sde, steps, t_end, x.device)
    alphas, sigmas = sde.marginal(ts)
    lams = torch.log(alphas) - torch.log(sigmas)
    x0_prev = None
    x0 = x
    for i in range(steps):
        x0, _ = _x0(eps_fn, x, _tvec(ts[i], x), sde)
        if callback is not None:
            callback(SamplerStep(i, steps, ts[i], x, x0))
        h = lams[i + 1] - lams[i]
        if x0_prev is None or i == steps - 1:
            d = x0  # first step: DPM-Solver++(1); last step: no extrapolation
        else:
            r = (lams[i] - lams[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * torch.expm1(-h) * d
        x0_prev = x0
    # final denoise at t_end: one more evaluation would cost an NFE; x at t_end is already ~clean
    return x


SAMPLERS = {"em": euler_maruyama, "ddim": ddim, "dpm2m": dpm_solver_2m}
DEFAULT_STEPS = {"em": 1000, "ddim": 50, "dpm2m": 25}
