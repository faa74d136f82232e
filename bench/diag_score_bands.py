"""Where in diffusion time does a prior lose precision and recall? (issue #15, item 5)

Samples a prior with its ε̂ replaced, in one band of t at a time, by the exact score of its training poses: the
posterior mean of the Gaussian mixture centred on them under the subVP marginal (a perfect memoriser of the
training set). A band whose replacement closes the gap to the held-out poses is where the network falls short.
Also reports the training poses themselves (drawn without repetition) as the real-data level.

    python -m bench.diag_score_bands --checkpoint RUN/prior.pt --part body \\
        --train TRAIN.npz --held HELD.npz --band 0:0 --band 0:2 --band 0.4:2 --band 0.15:2 --band 0.15:0.4

TRAIN/HELD: npz files with `poses` (N, D), the prior's training poses and poses it never saw (e.g. a split of
`../shared/data/poses/<part>_reference_train.npz` the prior was trained on one side of). `--band LO:HI` uses the
exact score for LO ≤ t < HI (0:0: the network everywhere). Metrics: spec §8.1 on raw axis-angle (FID against the
held-out Gaussian, PRDC with k = 3). JSON to --out (default bench/results/score_bands.json).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench._common import environment, write
from dposer_cli.core.parts import Part
from dposer_cli.engine import samplers as smp
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.metrics import fid, gaussian_stats, prdc

CHUNK = 512  # samples per block of the exact score (a (CHUNK, N_train) weight matrix)


def exact_eps(prior: DPoserPrior, train: Tensor):
    """ε of the empirical distribution of `train` (normalised, (N, D)) under the prior's SDE."""

    def eps(x: Tensor, t: Tensor) -> Tensor:
        alpha, std = prior.sde.marginal(t)
        out = torch.empty_like(x)
        for s in range(0, len(x), CHUNK):
            xs, a, sd = x[s : s + CHUNK], alpha[s : s + CHUNK, None], std[s : s + CHUNK, None]
            # ‖x − α·x_i‖² = α²‖x/α − x_i‖² (α differs per sample)
            logits = -(torch.cdist(xs / a, train) ** 2) * a**2 / (2 * sd**2)
            out[s : s + CHUNK] = (xs - a * (torch.softmax(logits, dim=1) @ train)) / sd
        return out

    return eps


def banded(prior: DPoserPrior, exact, lo: float, hi: float):
    def eps(x: Tensor, t: Tensor) -> Tensor:
        tt = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        out = prior.eps(x, tt)
        sel = (tt >= lo) & (tt < hi)
        if sel.any():
            out[sel] = exact(x[sel], tt[sel])
        return out

    return eps


def score(samples: np.ndarray, held: np.ndarray, stats) -> dict:
    m = prdc(held, samples, k=3)
    return {
        "fid": round(fid(samples, mu=stats[0], sigma=stats[1]), 4),
        "precision": round(m["precision"], 4),
        "recall": round(m["recall"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--part", default="body")
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--held", type=Path, required=True)
    ap.add_argument("--band", action="append", default=[], help="LO:HI (repeat); 0:0 = the network alone")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sampler", default=smp.DEFAULT_SAMPLER)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_bands.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    part = Part(args.part)
    prior = DPoserPrior.from_checkpoint(args.checkpoint, part)
    train_raw = np.load(args.train, allow_pickle=False)["poses"].astype(np.float64)
    held = np.load(args.held, allow_pickle=False)["poses"].astype(np.float64)
    stats = gaussian_stats(held)
    exact = exact_eps(prior, prior.normalize(torch.as_tensor(train_raw, dtype=torch.float32)))
    steps = args.steps or smp.DEFAULT_STEPS[args.sampler]
    report: dict = {
        "benchmark": "score_bands",
        "env": environment(),
        "checkpoint": str(args.checkpoint),
        "train": f"{args.train} ({len(train_raw)} poses)",
        "held": f"{args.held} ({len(held)} poses)",
        "sampler": f"{args.sampler}-{steps}",
        "n": args.n,
        "training_poses": [
            score(train_raw[np.random.default_rng(s).permutation(len(train_raw))[: args.n]], held, stats)
            for s in range(args.seeds)
        ],
        "bands": {},
    }
    for band in args.band or ["0:0"]:
        lo, hi = (float(v) for v in band.split(":"))
        cells = []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(seed)
            x = prior.sde.prior_sampling((args.n, prior.dim), g, prior.device)
            with torch.no_grad():
                x0 = smp.SAMPLERS[args.sampler](
                    banded(prior, exact, lo, hi), x, sde=prior.sde, steps=steps, t_end=1e-3, generator=g
                )
            samples = prior.denormalize(x0).double().numpy()
            cells.append({**score(samples, held, stats), "seconds": round(time.perf_counter() - t0, 1)})
        report["bands"]["network" if lo >= hi else f"exact score for {lo} <= t < {hi}"] = cells
        print(band, cells, flush=True)
    write(report, args.out)


if __name__ == "__main__":
    main()
