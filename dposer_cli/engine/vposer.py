"""VPoser v2 (Pavlakos et al. 2019; human_body_prior `V02_05`) as a baseline body prior, from the user's weights.

The network is rebuilt here from the published checkpoint layout, so neither `human_body_prior` nor its
configuration files are needed (module indices match, so the state dict loads as is):

    encoder_net  0 flatten · 1 BatchNorm1d(63) · 2 Linear(63, H) · 3 LeakyReLU · 4 BatchNorm1d(H) · 5 Dropout
                 6 Linear(H, H) · 7 Linear(H, H) · 8 {mu: Linear(H, L), logvar: Linear(H, L)}
    decoder_net  0 Linear(L, H) · 1 LeakyReLU · 2 Dropout · 3 Linear(H, H) · 4 LeakyReLU · 5 Linear(H, 126)
                 · 6 6D → rotation matrix (columns Gram–Schmidt of x.view(3, 2)) → axis-angle

H (512) and L (32) are read off the weights. A Lightning checkpoint (`snapshots/*.ckpt`, keys prefixed
`vp_model.`) or a bare state dict is accepted; it is read with the restricted unpickler of
`engine.checkpoint`, so a checkpoint can never run code.

As a prior, with the interface of the other baselines (`engine.baselines`):

- `energy(pose)` = ‖μ_enc(pose)‖²: the squared norm of the encoded pose under VPoser's N(0, I) latent prior
  (the pose-space form of SMPLify-X's latent L2 term);
- `sample(n)` = decode(z), z ~ N(0, I);
- `complete`: per hypothesis a latent code from a random start, minimising ‖decode(z)_O − x_O‖² + λ‖z‖²
  by Adam through `engine.optimize` (batched over poses × hypotheses); observed dims are kept.
"""

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError
from dposer_cli.core.parts import Part
from dposer_cli.core.rotations import matrix_to_axis_angle, rot6d_to_matrix
from dposer_cli.engine.baselines import BaselinePrior
from dposer_cli.engine.checkpoint import load_pickled
from dposer_cli.engine.optimize import Stage, Step, optimize

JOINTS = 21
PREFIX = "vp_model."
WEIGHTS_HINT = (
    "VPoser v2.0 is licensed with SMPL-X: download 'VPoser v2.0' (V02_05) from "
    "https://smpl-x.is.tue.mpg.de and pass its folder or its snapshots/*.ckpt with --checkpoint"
)
COMPLETE_STEPS = 300
COMPLETE_LR = 0.05
COMPLETE_LATENT_WEIGHT = 1e-3


class _Heads(nn.Module):
    """The encoder's `NormalDistDecoder`: mean and (pre-softplus) scale of q(z | pose)."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, h: Tensor) -> Tensor:
        return self.mu(h)  # the mean is all a prior needs


class _Rot6D(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return rot6d_to_matrix(x.reshape(*x.shape[:-1], JOINTS, 6))


class VPoserPrior(BaselinePrior):
    """VPoser v2 as a body prior (part `body`, 63 axis-angle values)."""

    kind = "vposer"

    def __init__(self, hidden: int = 512, latent: int = 32) -> None:
        super().__init__(Part.body)
        n = JOINTS * 3
        self.latent = latent
        self.encoder_net = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(n),
            nn.Linear(n, hidden),
            nn.LeakyReLU(),
            nn.BatchNorm1d(hidden),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
            _Heads(hidden, latent),
        )
        self.decoder_net = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.LeakyReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, JOINTS * 6),
            _Rot6D(),
        )
        self.eval()
        self.requires_grad_(False)

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None, device: str | torch.device = "cpu") -> "VPoserPrior":
        """VPoser from a V02_05 folder (its newest `snapshots/*.ckpt`), a `.ckpt` or a state-dict file.

        Raises:
            MissingAssetError: no path, or nothing loadable where it points.
            AssetMismatchError: the file is not a VPoser v2 checkpoint (names the missing weights).
        """
        if path is None:
            raise MissingAssetError("--prior vposer needs the VPoser v2 weights", hint=WEIGHTS_HINT)
        file = _checkpoint_file(Path(path).expanduser())
        raw = load_pickled(file)
        state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
        if not isinstance(state, dict):
            raise AssetMismatchError(f"{file} holds no state dict; expected a VPoser v2 checkpoint")
        state = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.startswith(("encoder_net.", "decoder_net."))}
        try:
            hidden, latent = state["encoder_net.2.weight"].shape[0], state["decoder_net.0.weight"].shape[1]
        except (KeyError, AttributeError, IndexError):
            raise AssetMismatchError(
                f"{file} is not a VPoser v2 checkpoint (no encoder_net.2 / decoder_net.0 weights)",
                hint=WEIGHTS_HINT,
            ) from None
        model = cls(int(hidden), int(latent))
        expected = model.state_dict()
        missing = [k for k in expected if k not in state and k != "mean_pose"]
        if missing:
            raise AssetMismatchError(
                f"{file} is not a VPoser v2 checkpoint: missing {missing[0]}"
                f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
            )
        wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
        if wrong:
            raise AssetMismatchError(
                f"{file}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected "
                f"{tuple(expected[wrong[0]].shape)} (a VPoser for 21 body joints)"
            )
        model.load_state_dict({**state, "mean_pose": expected["mean_pose"]})
        model = model.to(device)
        with torch.no_grad():
            model.mean_pose.copy_(model.decode(torch.zeros(1, latent, device=model.device))[0])
        model.source = f"baseline: vposer ({file}, latent {latent})"
        return model

    # ---- the network -----------------------------------------------------------------------------------------
    def encode(self, pose: Float[Tensor, "N 63"]) -> Float[Tensor, "N L"]:
        """Mean of q(z | pose)."""
        return self.encoder_net(pose)

    def decode(self, z: Float[Tensor, "N L"]) -> Float[Tensor, "N 63"]:
        """Axis-angle body pose (N, 63) of latent codes."""
        rot = self.decoder_net(z)  # (N, 21, 3, 3)
        return matrix_to_axis_angle(rot).reshape(*z.shape[:-1], JOINTS * 3)

    # ---- the prior interface ---------------------------------------------------------------------------------
    def energy(self, pose: Float[Tensor, "*batch 63"]) -> Float[Tensor, "*batch"]:
        flat = pose.reshape(-1, JOINTS * 3).to(self.mean_pose.dtype)
        mu = self.encode(flat)
        return mu.pow(2).sum(-1).reshape(pose.shape[:-1]).to(pose.dtype)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, **_: object
    ) -> Float[Tensor, "n 63"]:
        z = torch.randn(n, self.latent, generator=generator, device=self.device)
        return self.decode(z)

    def complete(
        self,
        pose: Float[Tensor, "N D"],
        observed: Tensor,
        *,
        hypo: int = 1,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "N H D"]:
        """Per hypothesis a latent code from N(0, I), fitted by Adam (`engine.optimize`, one stage of
        COMPLETE_STEPS) to ‖decode(z)_O − x_O‖² + λ‖z‖²; observed dims are kept."""
        obs = observed.to(device=self.device, dtype=torch.bool)
        target = pose.to(self.device, self.mean_pose.dtype).repeat_interleave(hypo, 0)  # (N·H, D)
        z = torch.randn(len(target), self.latent, generator=generator, device=self.device)

        def loss_fn(params: dict[str, Tensor], step: Step) -> Tensor:
            resid = (self.decode(params["z"]) - target)[:, obs]
            return resid.pow(2).sum(-1) + step.stage.weights["latent"] * params["z"].pow(2).sum(-1)

        stage = Stage("latent", COMPLETE_STEPS, {"z": COMPLETE_LR}, {"latent": COMPLETE_LATENT_WEIGHT})
        with torch.enable_grad():
            optimize({"z": z}, [stage], loss_fn)
        with torch.no_grad():
            out = torch.where(obs, target, self.decode(z))
        return out.reshape(pose.shape[0], hypo, -1).to(pose)


def _checkpoint_file(path: Path) -> Path:
    if not path.exists():
        raise MissingAssetError(f"VPoser weights not found: {path}", hint=WEIGHTS_HINT)
    if path.is_file():
        return path
    candidates = (
        sorted((path / "snapshots").glob("*.ckpt"))
        or sorted(path.glob("*.ckpt"))
        or sorted(path.glob("*.pt"))
    )
    if not candidates:
        raise MissingAssetError(
            f"no VPoser checkpoint in {path} (looked for snapshots/*.ckpt, *.ckpt, *.pt)", hint=WEIGHTS_HINT
        )
    return candidates[-1]


def load_vposer(part: Part | str, path: Path | None, device: Any = "cpu") -> VPoserPrior:
    """The VPoser baseline of `part` (body only).

    Raises:
        InputError: a part other than body.
    """
    if Part(part) is not Part.body:
        raise InputError(
            f"VPoser is a body prior; there is none for --part {Part(part).value}",
            hint="baselines for this part: none, l2, gmm",
        )
    return VPoserPrior.load(path, device)
