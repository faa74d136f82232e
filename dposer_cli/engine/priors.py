"""The one registry of priors a task can use as a loss (`--prior`): the DPoser prior and its baselines.

    prior = build_prior("gmm", "body", train=poses)      # any kind, one call
    check_prior("vposer", Part.hand)                      # InputError: VPoser is a body prior

Every object returned has the `engine.optimize.PosePrior` interface (`part`, `loss(pose, t, *, weighting,
generator)`, `nfe_per_call`), so `engine.optimize.optimize` takes any of them.
"""

from pathlib import Path

import torch
from torch import Tensor

from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.engine.baselines import BaselinePrior, GaussianMixturePrior, L2Prior, NoPrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.vposer import load_vposer

# kind → what it is (help texts and error hints read this table)
PRIORS: dict[str, str] = {
    "dposer": "the DPoser diffusion prior (--checkpoint, downloaded official weights or the bundled demo prior)",
    "none": "no prior term (the paper's 'w/o prior')",
    "l2": "‖θ‖² of the raw pose (zero = rest pose / mean hand / neutral face)",
    "gmm": "Gaussian mixture fitted on training poses (SMPLify's prior)",
    "vposer": "VPoser v2 from the user's licensed weights (body only)",
}
BODY_ONLY = frozenset({"vposer"})


def prior_kinds(part: Part | str | None = None) -> tuple[str, ...]:
    """The prior kinds available for `part` (all kinds when None)."""
    if part is None or Part(part) is Part.body:
        return tuple(PRIORS)
    return tuple(k for k in PRIORS if k not in BODY_ONLY)


def check_prior(kind: str, part: Part | str | None = None, allowed: tuple[str, ...] | None = None) -> str:
    """Validate a `--prior` name for `part` (and a command's subset `allowed`); returns it.

    Raises:
        InputError: unknown kind (with the nearest valid one) or a kind that does not exist for the part.
    """
    kinds = tuple(k for k in prior_kinds(None) if allowed is None or k in allowed)
    if kind not in kinds:
        raise InputError(
            f"unknown --prior {kind!r}{suggest(kind, list(kinds))}", hint="priors: " + ", ".join(kinds)
        )
    if kind not in prior_kinds(part):
        raise InputError(
            f"{'VPoser' if kind == 'vposer' else kind} is a body prior; there is none for --part "
            f"{Part(part).value}",
            hint="priors for this part: " + ", ".join(k for k in prior_kinds(part) if k in kinds),
        )
    return kind


def build_prior(
    kind: str,
    part: Part | str,
    *,
    checkpoint: Path | None = None,
    normalizer: Path | None = None,
    device: str | torch.device = "cpu",
    train: Tensor | None = None,
    n_components: int = 8,
    seed: int = 0,
) -> DPoserPrior | BaselinePrior:
    """The prior `kind` of `part` on `device`.

    `checkpoint`/`normalizer` name the DPoser weights (or, for vposer, the VPoser weights folder/file);
    `train` holds the training poses the GMM is fitted on (required for gmm).

    Raises:
        InputError: unknown kind, a body-only kind for another part, gmm without training poses.
        MissingAssetError / AssetMismatchError: weights not found or not usable.
    """
    check_prior(kind, part)
    part = Part(part)
    if kind == "dposer":
        return DPoserPrior.load(part, checkpoint, normalizer=normalizer, device=device)
    if kind == "vposer":
        return load_vposer(part, checkpoint, device)
    if kind == "none":
        return NoPrior(part).to(device)
    if kind == "l2":
        return L2Prior(part).to(device)
    if train is None:
        raise InputError("the gmm prior needs training poses to fit")
    return GaussianMixturePrior(part, n_components, seed=seed).fit(train).to(device)
