"""Evaluation metrics (spec §8): joint errors with alignment, APD, FID, PRDC and dNN — batched, chunked.

Joint errors keep the unit of their input (metres in, metres out); callers multiply by 1000 and name the result
`*_mm`. Generation metrics work on raw axis-angle vectors, as the official evaluation does (spec §8.1).
"""

import math
import warnings

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from dposer_cli.core.errors import InputError
from dposer_cli.core.rotations import rigid_registration

ALIGNMENTS = (None, "root", "procrustes")
DNN_MEASURES = ("rotation", "absolute")
_CHUNK_ELEMENTS = 1 << 24  # ~16 M distances per block (128 MiB in float64) keeps 50k × 50k PRDC in memory
_QUAT_DOT_MAX = 1.0 - 1e-12  # official clamp before acos (spec §8.1)

Array = Tensor | np.ndarray


def _tensor(x: Array, dtype: torch.dtype | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


# ---------------------------------------------------------------------------------------------------- joints
def procrustes_align(
    pred: Float[Array, "*batch J 3"], gt: Float[Array, "*batch J 3"]
) -> Float[Tensor, "*batch J 3"]:
    """Similarity-align `pred` onto `gt` per sample (spec §8.2 `rigid_align`): Umeyama through
    `core.rotations.rigid_registration` (roma), the same optimum as the official SVD form with the reflection fix.

    Where `pred` or `gt` has no spread (e.g. a single joint) the optimal scale is 0, as in the official code:
    `pred` lands on the centroid of `gt`.
    """
    pred, gt = _tensor(pred), _tensor(gt)
    rot, trans, scale = rigid_registration(pred, gt, scaling=True)
    aligned = scale[..., None, None] * (pred @ rot.transpose(-1, -2)) + trans[..., None, :]
    mu_g = gt.mean(dim=-2, keepdim=True)
    flat = ((pred - pred.mean(dim=-2, keepdim=True)).abs().amax(dim=(-2, -1)) == 0) | (
        (gt - mu_g).abs().amax(dim=(-2, -1)) == 0
    )
    return torch.where(flat[..., None, None], mu_g.expand_as(gt), aligned)


def mpjpe(
    pred: Float[Array, "*batch J 3"], gt: Float[Array, "*batch J 3"], *, align: str | None = None
) -> Float[Tensor, "*batch"]:
    """Mean per-joint Euclidean error (input unit) after optional alignment: None, "root" (joint 0), "procrustes".

    Also serves as MPVPE when given vertices.
    """
    pred, gt = _tensor(pred), _tensor(gt)
    if pred.shape != gt.shape or pred.ndim < 2 or pred.shape[-1] != 3:
        raise InputError(f"mpjpe: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (..., J, 3)")
    if align == "root":
        pred, gt = pred - pred[..., :1, :], gt - gt[..., :1, :]
    elif align == "procrustes":
        pred = procrustes_align(pred, gt)
    elif align is not None:
        raise InputError(f"unknown alignment {align!r}; choose None, 'root' or 'procrustes'")
    diff = pred - gt
    if (
        diff.stride(-1) != 1
    ):  # e.g. frame-minor vertices (sparse skinning): a norm over xyz there is ~10× slower
        diff = diff.contiguous()
    return torch.linalg.vector_norm(diff, dim=-1).mean(dim=-1)


def pa_mpjpe(pred: Float[Array, "*batch J 3"], gt: Float[Array, "*batch J 3"]) -> Float[Tensor, "*batch"]:
    """MPJPE after per-sample similarity Procrustes alignment (spec §8.2)."""
    return mpjpe(pred, gt, align="procrustes")


def apd(samples: Float[Array, "*batch K J 3"]) -> Float[Tensor, "*batch"]:
    """Average pairwise distance: mean over ordered pairs i ≠ j of the mean per-joint distance (spec §8.1)."""
    x = _tensor(samples)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise InputError(f"apd: samples have shape {tuple(x.shape)}; expected (..., K, J, 3)")
    k = x.shape[-3]
    if k < 2:
        raise InputError(f"apd needs at least 2 samples, got {k}")
    total = torch.zeros(x.shape[:-3], dtype=x.dtype, device=x.device)
    # chunk over the first sample of each pair: K·K·J distances at once can exceed memory for large K
    rows = max(1, _CHUNK_ELEMENTS // max(1, k * x.shape[-2] * int(np.prod(x.shape[:-3], dtype=np.int64))))
    for start in range(0, k, rows):
        block = x[..., start : start + rows, None, :, :] - x[..., None, :, :, :]  # (*b, r, K, J, 3)
        total = total + torch.linalg.vector_norm(block, dim=-1).mean(dim=-1).sum(dim=(-1, -2))
    return total / (k * (k - 1))  # the i == j terms are exactly 0


# ---------------------------------------------------------------------------------------------------- FID
def gaussian_stats(x: Float[Array, "N D"]) -> tuple[Float[np.ndarray, " D"], Float[np.ndarray, "D D"]]:
    """Mean and covariance (`np.cov`, rowvar=False) in float64 — the statistics FID compares."""
    arr = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if arr.ndim != 2 or len(arr) < 2:
        raise InputError(f"FID statistics need (N ≥ 2, D) samples, got shape {arr.shape}")
    return arr.mean(axis=0), np.atleast_2d(np.cov(arr, rowvar=False))


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                   eps: float = 1e-6) -> float:  # fmt: skip
    """Fréchet distance between two Gaussians with the pytorch-fid stabilisation (spec §8.1).

    ``|μ1 − μ2|² + tr(Σ1) + tr(Σ2) − 2 tr(√(Σ1 Σ2))``; if the square root is not finite, ``eps`` is added to both
    diagonals; an imaginary part is dropped when its diagonal is below 1e-3, otherwise this raises.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise InputError(
            f"FID statistics do not match: mean {mu1.shape} / {mu2.shape}, covariance {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are handled below, as pytorch-fid does
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InputError(
                f"FID: matrix square root has imaginary component {np.max(np.abs(covmean.imag)):.3g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(samples: Float[Array, "N D"], *, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID of samples against reference statistics (`mu`, `sigma`, e.g. the official statistics.npz)."""
    mu_s, sigma_s = gaussian_stats(samples)
    if mu_s.shape != np.atleast_1d(mu).shape:
        raise InputError(f"FID: samples have dimension {mu_s.shape[0]} but the statistics have {np.size(mu)}")
    return fid_from_stats(mu_s, sigma_s, mu, sigma)


# ---------------------------------------------------------------------------------------------------- PRDC
def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_cols))


def _kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Distance of every row to its k-th nearest other row (self counted as the 0-th, as the official code)."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    step = _rows_per_chunk(len(x))
    for s in range(0, len(x), step):
        out[s : s + step] = torch.kthvalue(torch.cdist(x[s : s + step], x), k + 1, dim=1).values
    return out


def prdc(real: Float[Array, "N D"], fake: Float[Array, "M D"], k: int = 3) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020; official `compute_prdc_torch`, spec §8.1).

    Distances are Euclidean (`torch.cdist`, float64), computed in blocks so 50k × 50k never materialises.
    """
    r, f = _tensor(real, torch.float64), _tensor(fake, torch.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise InputError(
            f"prdc: real {tuple(r.shape)} and fake {tuple(f.shape)} must be (N, D) with the same D"
        )
    if min(len(r), len(f)) <= k:
        raise InputError(
            f"prdc with k={k} needs more than {k} real and fake samples, got {len(r)} and {len(f)}"
        )
    r_radii, f_radii = _kth_neighbour_radii(r, k), _kth_neighbour_radii(f, k)
    in_real_balls = torch.zeros(
        len(f), dtype=torch.float64, device=f.device
    )  # per fake: #real balls containing it
    recalled = torch.zeros(len(r), dtype=torch.bool, device=r.device)
    nearest_fake = torch.full((len(r),), math.inf, dtype=torch.float64, device=r.device)
    step = _rows_per_chunk(len(r))
    for s in range(0, len(f), step):
        d = torch.cdist(r, f[s : s + step])  # (N_real, chunk)
        in_real_balls[s : s + step] = (d < r_radii[:, None]).sum(dim=0)
        recalled |= (d < f_radii[None, s : s + step]).any(dim=1)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=1).values)
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(in_real_balls.mean() / k),
        "coverage": float((nearest_fake < r_radii).double().mean()),
    }


# ---------------------------------------------------------------------------------------------------- dNN
def _axis_angle_to_quat(aa: Tensor) -> Tensor:
    """(..., 3) axis-angle → (..., 4) unit quaternion (w, x, y, z); exact at zero via sinc."""
    angle = torch.linalg.vector_norm(aa, dim=-1, keepdim=True)
    # sin(θ/2)/θ = ½·sinc(θ/2π) with torch.sinc(x) = sin(πx)/(πx): no division by a zero angle
    return torch.cat([torch.cos(angle / 2), aa * 0.5 * torch.sinc(angle / (2 * math.pi))], dim=-1)


def dnn(samples: Float[Array, "N D"], train: Float[Array, "M D"], *, measure: str = "rotation") -> float:
    """Mean distance from each sample to its nearest training vector (spec §8.1).

    ``"rotation"``: per-joint quaternion geodesic ``2·acos(|⟨q1, q2⟩|)`` summed over the D/3 joints (body, hand);
    ``"absolute"``: Euclidean distance of the raw vectors (face, whole-body). Nearest neighbours are searched
    exhaustively in blocks.
    """
    s, t = _tensor(samples, torch.float64), _tensor(train, torch.float64)
    if s.ndim != 2 or t.ndim != 2 or s.shape[1] != t.shape[1] or len(s) == 0 or len(t) == 0:
        raise InputError(
            f"dnn: samples {tuple(s.shape)} and train {tuple(t.shape)} must be (N, D) with the same D"
        )
    if measure == "absolute":
        best = torch.full((len(s),), math.inf, dtype=torch.float64)
        step = _rows_per_chunk(len(s))
        for i in range(0, len(t), step):
            best = torch.minimum(best, torch.cdist(s, t[i : i + step]).min(dim=1).values)
        return float(best.mean())
    if measure != "rotation":
        raise InputError(f"unknown dNN measure {measure!r}; choose 'rotation' or 'absolute'")
    if s.shape[1] % 3:
        raise InputError(
            f"dnn measure='rotation' needs axis-angle vectors (D divisible by 3), got D={s.shape[1]}"
        )
    # joints first: (J, N, 4) @ (J, 4, M) gives per-joint dots as one batched matmul
    qs = _axis_angle_to_quat(s.reshape(len(s), -1, 3)).transpose(0, 1).contiguous()
    qt = _axis_angle_to_quat(t.reshape(len(t), -1, 3)).permute(1, 2, 0).contiguous()
    joints = qs.shape[0]
    best = torch.full((len(s),), math.inf, dtype=torch.float64)
    s_step = max(1, int(math.sqrt(_CHUNK_ELEMENTS / joints)))
    t_step = max(1, _CHUNK_ELEMENTS // (s_step * joints))
    for a in range(0, len(s), s_step):
        for b in range(0, len(t), t_step):
            dot = torch.bmm(qs[:, a : a + s_step], qt[:, :, b : b + t_step])  # (J, s, t)
            dist = dot.abs_().clamp_(max=_QUAT_DOT_MAX).acos_().sum(dim=0) * 2  # in place: the block is large
            best[a : a + s_step] = torch.minimum(best[a : a + s_step], dist.min(dim=1).values)
    return float(best.mean())
