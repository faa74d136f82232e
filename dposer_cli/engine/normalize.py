"""Z-score normalisation per part, with left-hand mirroring for whole-body vectors (spec §1.1, §1.3)."""

import re
import warnings
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError, UnsafeFileError
from dposer_cli.core.parts import PARTS, Part


def mirror_mask(part: Part) -> Tensor:
    """+1/−1 per dim: −1 on the y and z components of mirrored (left-hand) segments."""
    signs = []
    for seg in PARTS[part].segments:
        s = torch.ones(seg.dim)
        if seg.mirror:
            s[1::3] = -1.0
            s[2::3] = -1.0
        signs.append(s)
    return torch.cat(signs)


class Normalizer(nn.Module):
    """x_n = (m ⊙ x − mean) / std, where m mirrors left hands into right-hand convention."""

    mean: Tensor  # buffers, (D,) each
    std: Tensor
    signs: Tensor

    def __init__(self, mean: Tensor, std: Tensor, signs: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())
        self.register_buffer("signs", signs.float().clone())

    @classmethod
    def for_part(cls, part: Part, mean: Tensor, std: Tensor, *, where: str = "normaliser") -> "Normalizer":
        """The normaliser of `part`; `where` names the statistics' source in errors.

        Raises:
            AssetMismatchError: wrong size, a non-finite mean or std, or a std that is not > 0.
        """
        check_statistics(mean, std, PARTS[Part(part)].dim, where)
        return cls(mean, std, mirror_mask(part))

    def normalize(self, x: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch D"]:
        return (x * self.signs - self.mean) / self.std

    def denormalize(self, x: Float[Tensor, "*batch D"]) -> Float[Tensor, "*batch D"]:
        return (x * self.std + self.mean) * self.signs

    def state(self) -> dict[str, Tensor]:
        return {"mean": self.mean.detach().cpu(), "std": self.std.detach().cpu()}


STATISTICS = ("mean-std", "robust")
IQR_PER_STD = 1.349  # interquartile range of a unit Gaussian


def statistics(data: Float[Tensor, "N D"], part: Part, kind: str = "mean-std") -> dict[str, Tensor]:
    """Centre and scale of training data in mirrored space (what a checkpoint stores as mean/std).

    `mean-std` (official): mean and standard deviation. `robust`: median and IQR/1.349 (the std of a Gaussian
    with that IQR), or the std where the IQR is under a quarter of it (mostly-constant dimensions). Pose
    coordinates are heavy-tailed (body kurtosis ≈ 22): a std inflated by the tails squeezes most poses into a
    small core, and a prior trained that way missed the tails more (bench/results/demo_prior_trials.json).
    """
    if kind not in STATISTICS:
        raise ValueError(f"unknown statistics {kind!r} ({', '.join(STATISTICS)})")
    x = data.float() * mirror_mask(part)
    std = x.std(0).clamp_min(1e-6)
    if kind == "mean-std":
        return {"mean": x.mean(0), "std": std}
    q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype, device=x.device), dim=0)
    iqr = (q[2] - q[0]) / IQR_PER_STD
    return {"mean": q[1], "std": torch.where(iqr > 0.25 * std, iqr, std)}


def check_statistics(mean: Tensor, std: Tensor, dim: int, where: str) -> None:
    """Refuse statistics that would make every normalised pose garbage (spec §1.3: x_n = (x − μ)/σ).

    Raises:
        AssetMismatchError: not `dim` values each, a non-finite value, or a std that is not > 0.
    """
    mean, std = torch.as_tensor(mean), torch.as_tensor(std)
    if mean.numel() != dim or std.numel() != dim:
        got = mean.numel() if mean.numel() == std.numel() else f"{mean.numel()} (mean) / {std.numel()} (std)"
        raise AssetMismatchError(f"{where}: statistics have {got} dims, expected {dim}")
    for name, value in (("mean", mean), ("std", std)):
        bad = ~torch.isfinite(value.float().flatten())
        if bad.any():
            i = int(bad.nonzero()[0])
            raise AssetMismatchError(
                f"{where}: {name} is not finite at dim {i} ({float(value.flatten()[i])})"
            )
    low = std.float().flatten() <= 0
    if low.any():
        i = int(low.nonzero()[0])
        raise AssetMismatchError(
            f"{where}: std must be > 0 in every dim; dim {i} has {float(std.flatten()[i])} "
            "(normalising would divide by zero)"
        )


def load_statistics(file: Path, dim: int) -> tuple[Tensor, Tensor]:
    """`mean_poses` / `std_poses` of an official `axis_normalize2.pt` (weights-only loading, library warnings
    silenced), checked as `check_statistics` does: what every command and `dposer download --check` read.

    Raises:
        UnsafeFileError: the file references code. AssetMismatchError: unreadable, wrong keys, sizes or values.
    """
    try:
        # torch's notes (old pickle protocols, ...) would print before our one line: silence them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a mismatch
        # weights-only loading names what it refused: "unsupported GLOBAL posix.system whose module ..." or
        # "Unsupported global: GLOBAL builtins.exec was not an allowed global"
        unsafe = re.search(r"unsupported global:? GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if unsafe:
            raise UnsafeFileError(
                f"refusing to load {file}: it references {unsafe.group(1)}, which could run code "
                "(a normaliser holds plain tensors)",
                hint="only use normaliser files from their official source; nothing in this file was run",
            ) from None
        raise AssetMismatchError(f"{file} is not a readable normaliser file ({type(exc).__name__})") from None
    if not isinstance(d, dict) or "mean_poses" not in d or "std_poses" not in d:
        raise AssetMismatchError(
            f"{file}: expected keys mean_poses/std_poses (an official axis_normalize2.pt)"
        )
    try:
        mean = torch.as_tensor(d["mean_poses"]).float().flatten()
        std = torch.as_tensor(d["std_poses"]).float().flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AssetMismatchError(f"{file}: mean_poses/std_poses are not numeric arrays ({exc})") from None
    check_statistics(mean, std, dim, str(file))
    return mean, std


def _segment_file(root: Path, relpath: str) -> list[Path]:
    """Candidate locations of one segment's axis_normalize2.pt under a user-given root."""
    rel = Path(relpath)
    return [
        root / rel / "axis_normalize2.pt",
        root / rel.relative_to("data") / "axis_normalize2.pt",
        root / rel.name / "axis_normalize2.pt",
    ]


def load_official_normalizer(part: Part, explicit: Path | None, cache_root: Path) -> Normalizer:
    """Statistics the official checkpoints were trained with: --normalizer, else the downloaded copy.

    `explicit` may be an `axis_normalize2.pt` file (single-segment parts), its folder, or the official
    repository root / its `data/` folder holding all segments.
    """
    spec = PARTS[part]
    means, stds, searched = [], [], []
    for seg in spec.segments:
        cands: list[Path] = []
        if explicit is not None:
            explicit = Path(explicit)
            if explicit.is_file() and len(spec.segments) == 1:
                cands.append(explicit)
            elif explicit.is_file():
                raise InputError(
                    f"--normalizer {explicit}: --part {part.value} needs {len(spec.segments)} "
                    "normaliser files; give the official repository root (holding data/) instead"
                )
            else:
                if len(spec.segments) == 1:
                    cands.append(explicit / "axis_normalize2.pt")
                cands += _segment_file(explicit, seg.normalizer)
        else:
            cands.append(cache_root / seg.normalizer / "axis_normalize2.pt")
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            searched += [str(c) for c in cands]
            continue
        m, s = load_statistics(found, seg.dim)
        means.append(m)
        stds.append(s)
    if searched:
        raise MissingAssetError(
            f"normaliser statistics for the official {part.value} checkpoint not found (looked in: {', '.join(searched)})",
            hint=f"run `dposer download {part.value}` or pass --normalizer DIR (the official repo root holding data/)",
        )
    return Normalizer.for_part(part, torch.cat(means), torch.cat(stds))
