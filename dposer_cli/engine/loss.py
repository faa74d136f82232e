"""Training and prior losses (spec §6, §10). Losses return per-sample values; callers reduce.

`dposer_loss` is the DPoser-X contribution: a stop-gradient one-step denoising target at a truncated,
annealed diffusion time. Its gradient w.r.t. the pose is `2·w·(x0 − x̂0)`, with no backward pass
through the network.
"""

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from dposer_cli.engine.sde import SDE, append_dims

EpsFn = Callable[[Tensor, Tensor], Tensor]


def time_schedule(step: int, total: int, t_min: float, t_max: float) -> float:
    """Truncated linear annealing (time_strategy '3'): t_k = t_min + (S−k−1)/S·(t_max − t_min)."""
    return t_min + (total - step - 1) / total * (t_max - t_min)


def weight(alpha: Tensor, std: Tensor, kind: str) -> Tensor:
    """Weighting w(t): 'snr' = 0.5√(1+α/σ), 'snr2' = 0.5√(1+(α/σ)²), 'none' = 0.5 (spec §6.1)."""
    snr = alpha / std
    if kind == "snr":
        return 0.5 * torch.sqrt(1 + snr)
    if kind == "snr2":
        return 0.5 * torch.sqrt(1 + snr**2)
    if kind == "none":
        return torch.full_like(snr, 0.5)
    raise ValueError(f"unknown weighting {kind!r} (snr, snr2, none)")


WEIGHTINGS = ("snr", "snr2", "none")


def dposer_loss(
    eps_fn: EpsFn,
    x0: Float[Tensor, "*batch D"],
    t: Tensor | float,
    *,
    sde: SDE,
    weighting: str = "snr",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Float[Tensor, "*batch"]:
    """Per-sample DPoser prior loss w(t)·Σ_d (x0 − sg[x̂0(x_t, t)])² in normalised space.

    `x0` may have any leading dims; they are flattened for the network. One network evaluation.
    Reductions used by the official call sites: mean over B·D = `loss.mean() / D`; sum/B = `loss.mean()`.
    """
    lead, dim = x0.shape[:-1], x0.shape[-1]
    flat = x0.reshape(-1, dim)
    t_vec = (
        torch.as_tensor(t, dtype=flat.dtype, device=flat.device).expand(flat.shape[0]).clone()
        if not torch.is_tensor(t) or t.ndim == 0
        else t.reshape(-1).to(flat)
    )
    z = (
        noise.reshape(-1, dim)
        if noise is not None
        else torch.randn(flat.shape, generator=generator, device=flat.device, dtype=flat.dtype)
    )
    alpha, std = sde.marginal(t_vec)
    with torch.no_grad():
        x_t = append_dims(alpha, 2) * flat.detach() + append_dims(std, 2) * z
        target = (x_t - append_dims(std, 2) * eps_fn(x_t, t_vec)) / append_dims(alpha, 2)
    per = weight(alpha, std, weighting) * ((flat - target) ** 2).sum(-1)
    return per.reshape(lead)


def dsm_loss(
    eps_fn: EpsFn,
    x0: Float[Tensor, "B D"],
    *,
    sde: SDE,
    generator: torch.Generator | None = None,
    t_eps: float = 1e-5,
    loss_mask: Tensor | None = None,
) -> Float[Tensor, " B"]:
    """Denoising score matching, continuous subVP (spec §10.1): mean_d(mask·(ε̂(x_t,t) − z))², per sample."""
    b = x0.shape[0]
    t = torch.rand(b, generator=generator, device=x0.device) * (sde.T - t_eps) + t_eps
    z = torch.randn(x0.shape, generator=generator, device=x0.device)
    alpha, std = sde.marginal(t)
    x_t = append_dims(alpha, x0.ndim) * x0 + append_dims(std, x0.ndim) * z
    err = (eps_fn(x_t, t) - z) ** 2
    if loss_mask is not None:
        err = err * loss_mask
    return err.mean(-1)
