"""Score networks with the exact official module names and registration order (spec §2).

State-dict keys match `moonbow721/DPoser-X` (prefix `model.` stripped), so the released EMA weights
load with `strict=True`, and `parameters()` order matches the `model_ema['shadow_params']` list.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dposer_cli.core.config import NetConfig
from dposer_cli.core.parts import WHOLEBODY_SPLIT

GNORM_GROUPS = 32  # GroupNorm32 of every TimeFC (spec §2.2): the hidden width must be a multiple of it
GNORM_MIN_CHANNELS = 4  # channels per group below which a narrower network gets fewer groups (`gnorm_groups`)


def gnorm_groups(hidden: int) -> int:
    """GroupNorm groups of a TimeFC `hidden` wide: the official 32 from 128 channels on (every official and demo
    width); a narrower network keeps 4 channels per group (hidden/4 groups), since 32 groups of one channel
    would output their bias alone, whatever the input (and fail on a batch of one)."""
    return (
        GNORM_GROUPS if hidden >= GNORM_GROUPS * GNORM_MIN_CHANNELS else max(1, hidden // GNORM_MIN_CHANNELS)
    )


def timestep_embedding(label: Float[Tensor, " B"], dim: int) -> Float[Tensor, "B E"]:
    """Sinusoidal embedding: [sin(label·f), cos(label·f)], f_k = exp(-k·ln(1e4)/(half-1)) (spec §2.2)."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=label.device, dtype=torch.float32) * -(math.log(10000) / (half - 1))
    )
    args = label.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


def sigma_table(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """Descending geometric table sigmas[i] = σmax·(σmin/σmax)^(i/(n-1)) (spec §2.2)."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _gaussian_eps_scale(
    label: Tensor, num_scales: int, beta_min: float = 0.1, beta_max: float = 20.0
) -> Tensor:
    """σ/(α² + σ²) of the subVP SDE at t = label/(N−1): ε̂ = this·x_t is exact for N(0, I) data.

    With it as a skip connection the network only learns the deviation of the (normalised) pose
    distribution from a unit Gaussian, which is near zero at large t, where GroupNorm'd features
    cannot reproduce the input scale precisely.
    """
    t = label.float() / (num_scales - 1)
    lmc = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    alpha2 = torch.exp(2 * lmc)
    std = 1 - alpha2
    return std / (alpha2 + std**2)


class TimeFC(nn.Module):
    """The official TimeFC MLP: input/time projections, GroupNorm(32) (`gnorm_groups`), 2 residual blocks,
    ε-output / σ_table."""

    sigmas: Tensor  # buffer (num_scales,): the descending VE σ table

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 1024,
        embed: int = 512,
        n_blocks: int = 2,
        dropout: float = 0.1,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        scale_by_sigma: bool = True,
        gaussian_skip: bool = False,
    ) -> None:
        super().__init__()
        self.gaussian_skip = gaussian_skip
        self.in_dim, self.out_dim, self.hidden, self.embed, self.n_blocks = (
            in_dim,
            out_dim,
            hidden,
            embed,
            n_blocks,
        )
        self.scale_by_sigma = scale_by_sigma
        # registration order == official parameter order (EMA shadow list is positional)
        self.register_buffer("sigmas", sigma_table(sigma_min, sigma_max, num_scales))
        self.pre_dense = nn.Linear(in_dim, hidden)
        self.pre_dense_t = nn.Linear(embed, hidden)
        self.pre_gnorm = nn.GroupNorm(gnorm_groups(hidden), num_channels=hidden)
        self.shared_time_embed = nn.Sequential(nn.Linear(embed, embed), nn.SiLU())
        for b in range(1, n_blocks + 1):
            setattr(self, f"b{b}_dense1", nn.Linear(hidden, hidden))
            setattr(self, f"b{b}_dense1_t", nn.Linear(embed, hidden))
            setattr(self, f"b{b}_gnorm1", nn.GroupNorm(gnorm_groups(hidden), num_channels=hidden))
            setattr(self, f"b{b}_dense2", nn.Linear(hidden, hidden))
            setattr(self, f"b{b}_dense2_t", nn.Linear(embed, hidden))
            setattr(self, f"b{b}_gnorm2", nn.GroupNorm(gnorm_groups(hidden), num_channels=hidden))
        self.post_dense = nn.Linear(hidden, out_dim)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def time_terms(self, label: Float[Tensor, " B"]) -> Float[Tensor, "B K H"]:
        """The time projections added in `forward` (pre_dense_t, then dense1_t, dense2_t per block), stacked:
        they depend on the label alone, so an optimisation that knows its times computes them in one batch."""
        temb = self.shared_time_embed(timestep_embedding(label, self.embed))
        names = ["pre_dense_t"]
        for b in range(1, self.n_blocks + 1):
            names += [f"b{b}_dense1_t", f"b{b}_dense2_t"]
        return torch.stack([getattr(self, n)(temb) for n in names], dim=1)

    def forward(
        self, x: Float[Tensor, "B Din"], label: Float[Tensor, " B"], time_terms: Tensor | None = None
    ) -> Float[Tensor, "B Dout"]:
        """ε̂ for normalised input `x` at `label = 999·t` (`time_terms`: `self.time_terms(label)`, precomputed;
        rows broadcast)."""
        terms = self.time_terms(label) if time_terms is None else time_terms
        h = self.dropout(self.act(self.pre_gnorm(self.pre_dense(x) + terms[:, 0])))
        for b in range(1, self.n_blocks + 1):
            blk = lambda name, b=b: getattr(self, f"b{b}_{name}")  # noqa: E731
            h1 = self.dropout(self.act(blk("gnorm1")(blk("dense1")(h) + terms[:, 2 * b - 1])))
            h2 = self.dropout(self.act(blk("gnorm2")(blk("dense2")(h1) + terms[:, 2 * b])))
            h = h + h2
        out = self.post_dense(h)
        if (
            self.gaussian_skip
        ):  # residual on the exact ε of N(0, I) data (normalised poses): see _gaussian_eps
            out = out + _gaussian_eps_scale(label, int(self.sigmas.shape[0]))[:, None] * x
        if not self.scale_by_sigma:  # plain ε-output (our demo priors): one output scale for every t
            return out
        # scale_by_sigma: divide by the descending VE table at floor(label) (spec §2.2, reproduced bit-for-bit)
        idx = label.long().clamp(0, self.sigmas.shape[0] - 1)
        return out / self.sigmas[idx][:, None]


class CombineWholebody(nn.Module):
    """Frozen per-part networks applied to [body 63 | lhand 45 | rhand 45 | face 103]; one shared hand net."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        (hb, hh, hf), (eb, eh, ef) = cfg.part_hidden, cfg.part_embed

        def part_net(dim: int, hidden: int, embed: int) -> TimeFC:
            return TimeFC(
                dim,
                dim,
                hidden,
                embed,
                n_blocks=cfg.n_blocks,
                dropout=cfg.dropout,
                sigma_min=cfg.sigma_min,
                sigma_max=cfg.sigma_max,
                num_scales=cfg.num_scales,
                scale_by_sigma=cfg.scale_by_sigma,
                gaussian_skip=cfg.gaussian_skip,
            )

        self.body_model = part_net(63, hb, eb)
        self.hand_model = part_net(45, hh, eh)
        self.face_model = part_net(103, hf, ef)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return torch.split(x, list(WHOLEBODY_SPLIT), dim=-1)  # type: ignore[return-value]

    def time_terms(self, label: Float[Tensor, " B"]) -> tuple[Tensor, Tensor, Tensor]:
        """The part networks' time projections (body, hand, face): see `TimeFC.time_terms`."""
        return (
            self.body_model.time_terms(label),
            self.hand_model.time_terms(label),
            self.face_model.time_terms(label),
        )

    def forward(
        self,
        x: Float[Tensor, "B 256"],
        label: Float[Tensor, " B"],
        time_terms: tuple[Tensor, ...] | None = None,
    ) -> Float[Tensor, "B 256"]:
        """ε̂ of each part by its network (`time_terms`: `self.time_terms(label)`, precomputed)."""
        xb, xl, xr, xf = self.split(x)
        tb, th, tf = time_terms if time_terms is not None else (None, None, None)
        return torch.cat(
            [
                self.body_model(xb, label, time_terms=tb),
                self.hand_model(xl, label, time_terms=th),
                self.hand_model(xr, label, time_terms=th),
                self.face_model(xf, label, time_terms=tf),
            ],
            dim=-1,
        )


class FinetuneWholebody(nn.Module):
    """Released whole-body `mixed` model: frozen part nets + zero-initialised MaskFC residual (spec §2.4)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.base_model = CombineWholebody(cfg)
        for p in self.base_model.parameters():
            p.requires_grad_(False)
        feat = cfg.part_hidden[0] + 2 * cfg.part_hidden[1] + cfg.part_hidden[2]
        self.mask_fc = TimeFC(
            feat,
            256,
            cfg.hidden_dim,
            cfg.embed_dim,
            cfg.n_blocks,
            cfg.dropout,
            cfg.sigma_min,
            cfg.sigma_max,
            cfg.num_scales,
            cfg.scale_by_sigma,
        )
        self.output_linear = nn.Linear(256, 256)
        nn.init.zeros_(self.output_linear.weight)
        nn.init.zeros_(self.output_linear.bias)
        self.zero_linear = self.output_linear  # the official code registers the same module twice

    def time_terms(self, label: Float[Tensor, " B"]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Time projections of the part networks (body, hand, face) and of the residual: see `TimeFC`."""
        return (*self.base_model.time_terms(label), self.mask_fc.time_terms(label))

    def forward(
        self,
        x: Float[Tensor, "B 256"],
        label: Float[Tensor, " B"],
        mask: Float[Tensor, "B 4"] | None = None,
        time_terms: tuple[Tensor, ...] | None = None,
    ) -> Float[Tensor, "B 256"]:
        """ε̂ (`time_terms`: `self.time_terms(label)`, precomputed: at batch 1 they are ~40 % of the work)."""
        if mask is not None:  # masked parts become 0 = the data mean in normalised space
            sizes = torch.tensor(WHOLEBODY_SPLIT, device=x.device)
            x = x * torch.repeat_interleave(mask.to(x.dtype), sizes, dim=-1)
        base = self.base_model(x, label, time_terms=None if time_terms is None else time_terms[:3])
        xb, xl, xr, xf = self.base_model.split(x)
        bm = self.base_model
        feats = torch.cat(
            [
                bm.body_model.pre_dense(xb),
                bm.hand_model.pre_dense(xl),
                bm.hand_model.pre_dense(xr),
                bm.face_model.pre_dense(xf),
            ],
            dim=-1,
        )
        residual = self.mask_fc(feats, label, time_terms=None if time_terms is None else time_terms[3])
        return base + self.output_linear(residual)


def build_net(cfg: NetConfig) -> nn.Module:
    """Instantiate the network described by `cfg` (see NETS)."""
    return NETS[cfg.kind](cfg)


def _timefc(cfg: NetConfig) -> TimeFC:
    return TimeFC(
        cfg.dim,
        cfg.dim,
        cfg.hidden_dim,
        cfg.embed_dim,
        cfg.n_blocks,
        cfg.dropout,
        cfg.sigma_min,
        cfg.sigma_max,
        cfg.num_scales,
        cfg.scale_by_sigma,
        cfg.gaussian_skip,
    )


NETS = {"timefc": _timefc, "wholebody": FinetuneWholebody}


def infer_net_config(state: dict[str, Tensor]) -> NetConfig:
    """Read network widths from weights (never assume them); raises KeyError on unknown layouts."""

    def blocks(prefix: str) -> int:
        return sum(1 for k in state if k.startswith(prefix + "b") and k.endswith("_dense1.weight"))

    if "base_model.body_model.pre_dense.weight" in state:
        parts = ("body_model", "hand_model", "face_model")
        return NetConfig(
            kind="wholebody",
            dim=256,
            hidden_dim=state["mask_fc.pre_dense.weight"].shape[0],
            embed_dim=state["mask_fc.pre_dense_t.weight"].shape[1],
            n_blocks=blocks("mask_fc."),
            part_hidden=tuple(state[f"base_model.{p}.pre_dense.weight"].shape[0] for p in parts),  # type: ignore[arg-type]
            part_embed=tuple(state[f"base_model.{p}.pre_dense_t.weight"].shape[1] for p in parts),  # type: ignore[arg-type]
        )
    w = state["pre_dense.weight"]
    return NetConfig(
        kind="timefc",
        dim=w.shape[1],
        hidden_dim=w.shape[0],
        embed_dim=state["pre_dense_t.weight"].shape[1],
        n_blocks=blocks(""),
    )
