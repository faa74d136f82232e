"""Diffusion inpainting samplers (spec §5): fill masked dims of a vector from the prior, conditioned on the rest.

Pure functions in the style of `engine/samplers.py`: `(eps_fn, x, mask, y, *, sde, steps, t_end, generator,
callback)`, working in normalised space on any leading dims (`(B, D)`, `(N, H, D)`, ...). `mask` is True on
*observed* dims and broadcasts against `x`; `y` holds the (normalised) observation, its masked entries are
ignored. Every step is one batched network evaluation, so NFE = `steps` whatever the batch.

- `score_sde_inpaint`: ScoreSDE replacement ("ScoreSDE" mode of the official completion): Euler–Maruyama
  predictor, then observed dims replaced by a fresh forward-noised copy of `y` at the current grid time.
- `guided_inpaint`: gradient guidance on ‖m ⊙ (y − x̂0(x_t))‖ (DPS, Chung et al. 2023), optionally combined
  with replacement (MCG, Chung et al. 2022). Unlike the official BP solver (which runs under no_grad and so
  never differentiates through the network, spec §14.1 #13) the gradient goes through ε̂ by default.

DPoser's own completion (DPoserComp, spec §6.4) is an optimisation, not a sampler: it lives in
`tasks.complete.dposer_complete` and runs through the one optimiser (`engine.optimize`).
"""

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dposer_cli.engine.sde import SDE, append_dims

EpsFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int], None] | None


def _tfull(t: Tensor, x: Tensor) -> Tensor:
    """Per-sample time over all leading dims (eps_fn flattens them, so t must match them all)."""
    return torch.full(x.shape[:-1], float(t), device=x.device, dtype=x.dtype)


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _replace(
    x: Tensor, mask: Tensor, y: Tensor, t: Tensor, sde: SDE, generator: torch.Generator | None
) -> Tensor:
    """x ← x·(1−m) + (α(t)·y + σ(t)·z')·m with fresh z' (ScoreSDE imputation)."""
    alpha, std = sde.marginal(t)
    noisy_y = append_dims(alpha, x.ndim) * y + append_dims(std, x.ndim) * _randn(x, generator)
    return torch.where(mask, noisy_y, x)


def _em_step(x: Tensor, eps: Tensor, t: Tensor, dt: float, sde: SDE) -> tuple[Tensor, Tensor]:
    """(mean, g) of the reverse-SDE Euler–Maruyama step (official dt = −1/steps convention, spec §5)."""
    _, std = sde.marginal(t)
    score = -eps / append_dims(std, x.ndim)
    f, g = sde.sde(x, t)
    g = append_dims(g, x.ndim)
    return x + (f - g**2 * score) * dt, g


@torch.no_grad()
def score_sde_inpaint(
    eps_fn: EpsFn,
    x: Float[Tensor, "*batch D"],
    mask: Bool[Tensor, "*#batch D"],
    y: Float[Tensor, "*#batch D"],
    *,
    sde: SDE,
    steps: int = 1000,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> Float[Tensor, "*batch D"]:
    """ScoreSDE inpainting by replacement (spec §5). `x` starts from the prior. NFE = steps.

    Returns the last predictor mean, whose observed dims are close to (not exactly) `y`, as in the
    official sampler; callers copy the observation back.
    """
    ts = torch.linspace(sde.T, t_end, steps, device=x.device)
    dt = -1.0 / steps
    mask = mask.to(torch.bool)
    y = torch.where(mask, y, 0.0)  # masked entries may be NaN
    x_mean = x
    for i in range(steps):
        t = _tfull(ts[i], x)
        x_mean, g = _em_step(x, eps_fn(x, t), t, dt, sde)
        x = x_mean + g * (-dt) ** 0.5 * _randn(x, generator)
        x = _replace(x, mask, y, t, sde, generator)
        if callback is not None:
            callback(i + 1, steps)
    return x_mean


def guided_inpaint(
    eps_fn: EpsFn,
    x: Float[Tensor, "*batch D"],
    mask: Bool[Tensor, "*#batch D"],
    y: Float[Tensor, "*#batch D"],
    *,
    sde: SDE,
    steps: int = 1000,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    step_size: float = 1.0,
    replace: bool = False,
    through_network: bool = True,
) -> Float[Tensor, "*batch D"]:
    """DPS (`replace=False`) or MCG (`replace=True`) inpainting. NFE = steps (plus one backward each).

    Each step: ε̂ at x_t, x̂0 = (x_t − σε̂)/α, residual r = ‖m ⊙ (y − x̂0)‖ per sample; the Euler–Maruyama
    update is followed by x ← x − step_size·∇_{x_t} r (official grad_step 1.0). With
    `through_network=False` ε̂ is treated as a constant, which reproduces the official BP solver.
    """
    ts = torch.linspace(sde.T, t_end, steps, device=x.device)
    dt = -1.0 / steps
    mask = mask.to(torch.bool)
    y = torch.where(mask, y, 0.0)
    m = mask.to(x.dtype)
    x = x.detach()
    x_mean = x
    for i in range(steps):
        t = _tfull(ts[i], x)
        alpha, std = sde.marginal(t)
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            eps = eps_fn(xg, t) if through_network else eps_fn(xg.detach(), t).detach()
            x0 = (xg - append_dims(std, x.ndim) * eps) / append_dims(alpha, x.ndim)
            resid = (m * (y - x0)).square().sum(-1).clamp_min(1e-20).sqrt()  # clamp: sqrt'(0) is inf
            (grad,) = torch.autograd.grad(resid.sum(), xg)
        with torch.no_grad():
            eps = eps.detach()
            x_mean, g = _em_step(x, eps, t, dt, sde)
            x_mean = x_mean - step_size * grad
            x = x_mean + g * (-dt) ** 0.5 * _randn(x, generator)
            if replace:
                x = _replace(x, mask, y, t, sde, generator)
        if callback is not None:
            callback(i + 1, steps)
    return x_mean.detach()


def _score_sde(eps_fn: EpsFn, x: Tensor, mask: Tensor, y: Tensor, **kw) -> Tensor:
    return score_sde_inpaint(eps_fn, x, mask, y, **kw)


def _dps(eps_fn: EpsFn, x: Tensor, mask: Tensor, y: Tensor, **kw) -> Tensor:
    return guided_inpaint(eps_fn, x, mask, y, replace=False, **kw)


def _mcg(eps_fn: EpsFn, x: Tensor, mask: Tensor, y: Tensor, **kw) -> Tensor:
    return guided_inpaint(eps_fn, x, mask, y, replace=True, **kw)


INPAINTERS = {"scoresde": _score_sde, "dps": _dps, "mcg": _mcg}
