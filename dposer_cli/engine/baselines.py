"""Baseline pose priors with the interface of the DPoser prior term, for fair comparisons in one harness.

Every baseline is an `nn.Module` that quacks like `DPoserPrior` where the task services use it:
`loss(pose, t, *, weighting, generator)` → per-sample values (the diffusion time and weighting are accepted
and ignored), `normalize`/`denormalize` (a shift by the baseline's mean pose, so `denormalize(0)` is its mean
pose, the starting point the motion denoiser uses), `part`, `dim`, `device`, `source` and an `nfe` counter
that stays 0 (no network).

- `NoPrior` ("w/o prior" rows of the paper): zero.
- `L2Prior` ("L2 prior"): ‖θ‖² of the raw axis-angle / coefficient vector (zero = rest pose / mean hand).
- `GaussianMixturePrior` ("GMM", SMPLify's prior): a full-covariance Gaussian mixture fitted on training poses
  by our own EM (`fit`, `score_samples`, `score`, `sample`, as scikit-learn's `GaussianMixture`); its loss is
  SMPLify's max-mixture negative log-likelihood min_k [½ Mahalanobis_k + ½ log det Σ_k − log w_k].

- `VPoserPrior` ("VPoser", body only, `engine.vposer`): the user's VPoser v2 weights (licensed, never bundled).

`engine.priors.build_prior(kind, part, ...)` builds any of them (the one prior registry).
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part


class BaselinePrior(nn.Module):
    """Shared plumbing: raw-space prior of one part with a mean pose (zeros unless a subclass sets it)."""

    kind = ""
    nfe_per_call = 0  # no network (engine.optimize.PosePrior)
    mean_pose: Tensor  # buffer (D,)

    def __init__(self, part: Part | str) -> None:
        super().__init__()
        self.part = Part(part)
        self.register_buffer("mean_pose", torch.zeros(PARTS[self.part].dim))
        self.source = f"baseline: {self.kind}"
        self.nfe = 0  # no network evaluations, ever

    @property
    def dim(self) -> int:
        return PARTS[self.part].dim

    @property
    def device(self) -> torch.device:
        return self.mean_pose.device

    def normalize(self, pose: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch D"]:
        return pose - self.mean_pose.to(pose)

    def denormalize(self, x: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch D"]:
        return x + self.mean_pose.to(x)

    def loss(
        self,
        pose: Float[Tensor, "*batch D"],
        t: float | Tensor = 0.1,
        *,
        weighting: str = "snr",
        generator: torch.Generator | None = None,
        normalized: bool = False,
        noise: Tensor | None = None,
    ) -> Float[Tensor, "*batch"]:
        """Per-sample prior value of raw poses (`t`, `weighting`, `generator`, `noise` are ignored)."""
        raw = self.denormalize(pose) if normalized else pose
        return self.energy(raw)

    def energy(self, pose: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch"]:
        raise NotImplementedError

    def complete(
        self,
        pose: Float[Tensor, "N D"],
        observed: Tensor,
        *,
        hypo: int = 1,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "N H D"]:
        """Fill the dims where `observed` (D,) is False, `hypo` hypotheses per pose (observed dims unchanged)."""
        raise InputError(
            f"the {self.kind} baseline cannot complete poses: without a prior the hidden joints "
            "are undetermined",
            hint="use --prior dposer, gmm or l2",
        )


class NoPrior(BaselinePrior):
    """No prior term at all (the paper's "w/o prior")."""

    kind = "none"

    def energy(self, pose: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch"]:
        return pose.new_zeros(pose.shape[:-1])


class L2Prior(BaselinePrior):
    """‖θ‖² of the raw parameter vector (the paper's "L2 prior")."""

    kind = "l2"

    def energy(self, pose: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch"]:
        return pose.pow(2).sum(-1)

    def complete(
        self,
        pose: Float[Tensor, "N D"],
        observed: Tensor,
        *,
        hypo: int = 1,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "N H D"]:
        """The L2 minimiser: hidden dims at zero (rest pose / mean hand); all hypotheses equal."""
        out = torch.where(
            observed.to(pose.device), pose, torch.zeros((), dtype=pose.dtype, device=pose.device)
        )
        return out[:, None].expand(-1, hypo, -1).clone()


class GaussianMixturePrior(BaselinePrior):
    """Full-covariance Gaussian mixture fitted by EM (scikit-learn's `GaussianMixture` conventions).

    Parameters are float64 buffers: `weights_` (K,), `means_` (K, D), `covariances_` (K, D, D).
    """

    kind = "gmm"
    weights_: Tensor  # buffer (K,)
    means_: Tensor  # buffer (K, D)
    covariances_: Tensor  # buffer (K, D, D)

    def __init__(
        self,
        part: Part | str,
        n_components: int = 8,
        *,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(part)
        if n_components < 1:
            raise InputError(f"a GMM needs at least 1 component (got {n_components})")
        self.n_components = int(n_components)
        self.reg_covar, self.max_iter, self.tol, self.seed = (
            float(reg_covar),
            int(max_iter),
            float(tol),
            int(seed),
        )
        d = self.dim
        self.register_buffer("weights_", torch.full((n_components,), 1.0 / n_components, dtype=torch.float64))
        self.register_buffer("means_", torch.zeros(n_components, d, dtype=torch.float64))
        self.register_buffer("covariances_", torch.eye(d, dtype=torch.float64).repeat(n_components, 1, 1))
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf

    # ---- scikit-learn style API ---------------------------------------------------------------------------
    def fit(self, x: Float[Tensor, "N D"]) -> "GaussianMixturePrior":
        """EM from a k-means++ start (seeded), until the mean log-likelihood gains less than `tol`.

        Raises:
            InputError: wrong width, non-finite values, or fewer samples than components.
        """
        x = self._check(x).to(self.means_.device)
        n, k = x.shape[0], self.n_components
        if n < k:
            raise InputError(
                f"GMM: {n} training poses for {k} components; give more poses or fewer components"
            )
        resp = self._kmeans_resp(x, torch.Generator(device="cpu").manual_seed(self.seed))
        self._m_step(x, resp)
        prev = -math.inf
        self.converged_ = False
        for i in range(1, self.max_iter + 1):
            log_prob = self._weighted_log_prob(x)  # (N, K)
            log_norm = torch.logsumexp(log_prob, dim=1)
            bound = float(log_norm.mean())
            self._m_step(x, torch.exp(log_prob - log_norm[:, None]))
            self.n_iter_ = i
            if abs(bound - prev) < self.tol:
                self.converged_ = True
                break
            prev = bound
        self.lower_bound_ = float(self.score(x))
        self.mean_pose.copy_((self.weights_[:, None] * self.means_).sum(0).to(self.mean_pose))
        self.source = f"baseline: gmm ({k} components, EM on {n} poses)"
        return self

    def score_samples(self, x: Float[Tensor, "N D"]) -> Float[Tensor, " N"]:
        """log p(x) per sample (float64)."""
        return torch.logsumexp(self._weighted_log_prob(self._check(x)), dim=1)

    def score(self, x: Float[Tensor, "N D"]) -> float:
        """Mean log-likelihood of the samples."""
        return float(self.score_samples(x).mean())

    def predict_proba(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N K"]:
        lp = self._weighted_log_prob(self._check(x))
        return torch.exp(lp - torch.logsumexp(lp, dim=1, keepdim=True))

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, **_: object
    ) -> Float[Tensor, "n D"]:
        """Draw `n` raw poses: a component per sample from the weights, then its Gaussian (float32)."""
        dev = self.means_.device
        comp = torch.multinomial(self.weights_.float(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=dev, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covariances_)  # (K, D, D)
        x = self.means_[comp] + (chol[comp] @ z[..., None])[..., 0]
        return x.float()

    def energy(self, pose: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch"]:
        """SMPLify's max-mixture negative log-likelihood (differentiable; computed in the pose's dtype)."""
        chol = torch.linalg.cholesky(self.covariances_)
        diff = pose[..., None, :].double() - self.means_  # (*batch, K, D)
        sol = torch.linalg.solve_triangular(chol, diff[..., None], upper=False)[..., 0]
        maha = sol.pow(2).sum(-1)  # (*batch, K)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        nll = 0.5 * maha + 0.5 * logdet - torch.log(self.weights_)
        return nll.min(-1).values.to(pose.dtype)

    @torch.no_grad()
    def complete(
        self,
        pose: Float[Tensor, "N D"],
        observed: Tensor,
        *,
        hypo: int = 1,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "N H D"]:
        """Exact conditional sampling p(x_M | x_O): a component per hypothesis from its posterior given the
        observed dims, then the component's conditional Gaussian."""
        obs = observed.to(torch.bool).cpu()
        o_idx, m_idx = torch.nonzero(obs).flatten(), torch.nonzero(~obs).flatten()
        x = pose.double()
        if len(m_idx) == 0:
            return pose[:, None].expand(-1, hypo, -1).clone()
        mu_o, mu_m = self.means_[:, o_idx], self.means_[:, m_idx]  # (K, O), (K, M)
        s_oo = self.covariances_[:, o_idx][:, :, o_idx]
        s_mo = self.covariances_[:, m_idx][:, :, o_idx]
        s_mm = self.covariances_[:, m_idx][:, :, m_idx]
        diff = x[:, None, o_idx] - mu_o  # (N, K, O)
        if len(o_idx):
            chol_o = torch.linalg.cholesky(s_oo)
            sol = torch.cholesky_solve(diff.permute(1, 2, 0), chol_o)  # (K, O, N) = Σ_oo⁻¹ (x_o − μ_o)
            maha = (diff.permute(1, 2, 0) * sol).sum(1).T  # (N, K)
            logdet = 2 * torch.log(torch.diagonal(chol_o, dim1=-2, dim2=-1)).sum(-1)
            log_r = torch.log(self.weights_) - 0.5 * (logdet + maha)
            cond_mean = mu_m + (s_mo @ sol).permute(2, 0, 1)  # (N, K, M)
            gain = torch.cholesky_solve(s_mo.transpose(1, 2), chol_o)  # (K, O, M) = Σ_oo⁻¹ Σ_om
            cond_cov = s_mm - s_mo @ gain
        else:
            log_r = torch.log(self.weights_).expand(len(x), -1)
            cond_mean, cond_cov = mu_m.expand(len(x), -1, -1), s_mm
        resp = torch.softmax(log_r, dim=1)
        comp = torch.multinomial(resp.float(), hypo, replacement=True, generator=generator)  # (N, H)
        eye = torch.eye(len(m_idx), dtype=x.dtype, device=x.device)
        chol_m = torch.linalg.cholesky(0.5 * (cond_cov + cond_cov.transpose(1, 2)) + self.reg_covar * eye)
        z = torch.randn(len(x), hypo, len(m_idx), generator=generator, device=x.device, dtype=x.dtype)
        rows = torch.arange(len(x), device=x.device)[:, None]
        fill = cond_mean[rows, comp] + (chol_m[comp] @ z[..., None])[..., 0]  # (N, H, M)
        out = pose[:, None].expand(-1, hypo, -1).clone()
        out[..., m_idx.to(out.device)] = fill.to(out.dtype)
        return out

    # ---- EM internals ----------------------------------------------------------------------------------------
    def _check(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x).to(device=self.means_.device, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(
                f"GMM for --part {self.part.value}: poses have shape {tuple(x.shape)}; "
                f"expected (N, {self.dim})"
            )
        if not torch.isfinite(x).all():
            raise InputError("GMM: the training poses contain NaN or infinite values")
        return x

    def _weighted_log_prob(self, x: Tensor) -> Tensor:
        """log w_k + log N(x | μ_k, Σ_k), (N, K)."""
        chol = torch.linalg.cholesky(self.covariances_)
        diff = x[:, None, :] - self.means_  # (N, K, D)
        sol = torch.linalg.solve_triangular(
            chol, diff.transpose(0, 1).transpose(1, 2), upper=False
        )  # (K, D, N)
        maha = sol.pow(2).sum(1).T  # (N, K)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return torch.log(self.weights_) - 0.5 * (self.dim * math.log(2 * math.pi) + logdet + maha)

    def _m_step(self, x: Tensor, resp: Tensor) -> None:
        nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # (K,)
        means = resp.T @ x / nk[:, None]
        diff = x[None] - means[:, None]  # (K, N, D)
        cov = torch.einsum("kn,knd,kne->kde", resp.T, diff, diff) / nk[:, None, None]
        cov = cov + self.reg_covar * torch.eye(self.dim, dtype=x.dtype, device=x.device)
        self.weights_.copy_(nk / nk.sum())
        self.means_.copy_(means)
        self.covariances_.copy_(cov)

    def _kmeans_resp(self, x: Tensor, gen: torch.Generator, iters: int = 20) -> Tensor:
        """Hard responsibilities from k-means++ seeding and a few Lloyd iterations (sklearn's 'kmeans' init)."""
        n, k = x.shape[0], self.n_components
        first = int(torch.randint(n, (1,), generator=gen))
        centers = [x[first]]
        d2 = (x - centers[0]).pow(2).sum(-1)
        for _ in range(1, k):
            probs = (
                (d2 / d2.sum()).cpu()
                if float(d2.sum()) > 0
                else torch.full((n,), 1.0 / n, dtype=torch.float64)
            )
            idx = int(torch.multinomial(probs.float(), 1, generator=gen))
            centers.append(x[idx])
            d2 = torch.minimum(d2, (x - x[idx]).pow(2).sum(-1))
        c = torch.stack(centers)
        for _ in range(iters):
            label = torch.cdist(x, c).argmin(1)
            onehot = torch.nn.functional.one_hot(label, k).to(x.dtype)
            count = onehot.sum(0)
            new = onehot.T @ x / count.clamp_min(1)[:, None]
            c = torch.where(count[:, None] > 0, new, c)  # empty clusters keep their centre
        return torch.nn.functional.one_hot(torch.cdist(x, c).argmin(1), k).to(x.dtype)
