"""Completion and motion denoising: wall time and network evaluations (NFE), batched vs looped, at equal error.

Completion (spec §6.4, §11): N held-out body poses × H hypotheses, legs masked, DPoser mode (200 steps).
- `batched`: all N·H vectors in one optimisation (200 NFE in total);
- `per_sample_loop`: one call per pose and hypothesis (batch 1, 200 NFE each), timed on a subset and reported
  per hypothesis — the cost of a naive per-sample loop;
- `per_hypothesis_loop` (`--official-loop`): the official tester's shape, one batched call over the poses per
  hypothesis (on a CPU, where the network is compute-bound, it costs about what the batched run does).
Errors (MPJPE over the masked joints, mm) are compared on the same subset: the loop and the batch run the
same per-vector algorithm (losses are summed over the batch, so each vector follows its own Adam trajectory).

Denoising (spec §7.4): the 240-frame Gestures example with 40 mm noise, temporal term on vertices (the
default) and on joints, NFE 180.

Every timing is a `dposer benchmark speed` workload (`evaluation.speed.completion` / `.denoising`, i.e.
`tasks.complete` / `tasks.denoise_motion`) timed by the same harness (`evaluation.speed.timed`).

    python -m bench.bench_complete --out bench/results/complete.json [--quick] [--checkpoint PATH]
"""

import math
from pathlib import Path

import numpy as np
import torch

from bench._common import device, environment, parser, write
from dposer_cli.bodies import load_body
from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.errors import DposerError
from dposer_cli.core.parts import PARTS, Part, mask_dims
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.engine.nets import build_net
from dposer_cli.engine.normalize import Normalizer
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.evaluation import speed
from dposer_cli.tasks import denoise_motion as dm
from dposer_cli.tasks.complete import DEFAULT_STEPS, completion_metrics


def _prior(checkpoint: Path | None) -> tuple[DPoserPrior, bool]:
    """The best available body prior; else an untrained network of the official size (timings only)."""
    try:
        return DPoserPrior.load(Part.body, checkpoint), True
    except DposerError:
        spec = PARTS[Part.body]
        cfg = PriorConfig(
            part="body", net=NetConfig(dim=63, hidden_dim=spec.official_hidden, embed_dim=spec.official_embed)
        )
        norm = Normalizer.for_part(Part.body, torch.zeros(63), torch.full((63,), 0.3))
        return DPoserPrior(cfg, build_net(cfg.net), norm, source="untrained official-size network"), False


def bench_completion(
    prior: DPoserPrior, n: int, hypo: int, loop_samples: int, official_loop: bool = False
) -> dict:
    data = np.load(shared_data_dir() / PARTS[Part.body].reference)["poses"].astype(np.float32)
    poses = torch.as_tensor(data[-n:])  # the tail of the file
    dims = mask_dims(Part.body, ["legs"])
    observed = torch.ones(n, 63, dtype=torch.bool)
    observed[:, list(dims)] = False
    body = load_body("body")
    dev = device()

    def evaluate(completed: torch.Tensor, truth: torch.Tensor) -> dict:
        return completion_metrics(Part.body, completed, truth, dims, body)[0]

    done: list[torch.Tensor] = []
    b = speed.timed(dev, speed.completion(prior, poses, observed, hypo=hypo, seed=0, out=done))
    batched, sec_b, nfe_b = done[0], b["seconds"], int(b["nfe"])
    sub = slice(0, loop_samples)

    # naive loop: one pose, one hypothesis per call (each call one completion workload of batch 1)
    def loop() -> tuple[int, int]:
        rows, nfe = [], 0
        for i in range(loop_samples):
            parts: list[torch.Tensor] = []
            for h in range(hypo):
                nfe += speed.completion(
                    prior, poses[i : i + 1], observed[i : i + 1], hypo=1, seed=1 + h, out=parts
                )()[1]
            rows.append(torch.cat(parts, 1))
        done.append(torch.cat(rows, 0))
        return loop_samples * hypo, nfe

    lp = speed.timed(dev, loop)
    looped, sec_l, nfe_l = done[-1], lp["seconds"], int(lp["nfe"])

    per_hyp_b = sec_b / (n * hypo)
    per_hyp_l = sec_l / (loop_samples * hypo)
    official: dict | None = None
    if official_loop:  # official shape: batch of poses, one call per hypothesis

        def per_hypothesis() -> tuple[int, int]:
            nfe = sum(speed.completion(prior, poses, observed, hypo=1, seed=2 + h)()[1] for h in range(hypo))
            return n * hypo, nfe

        h = speed.timed(dev, per_hypothesis)
        official = {
            "seconds": h["seconds"],
            "nfe": int(h["nfe"]),
            "seconds_per_hypothesis": h["seconds"] / (n * hypo),
            "speedup_of_batched": h["seconds"] / sec_b,
        }
    return {
        "n": n,
        "hypo": hypo,
        "mask": "legs",
        "steps": DEFAULT_STEPS["dposer"],
        "batched": {
            "seconds": sec_b,
            "nfe": nfe_b,
            "seconds_per_hypothesis": per_hyp_b,
            "metrics": evaluate(batched, poses),
            "metrics_on_loop_subset": evaluate(batched[sub], poses[sub]),
        },
        "per_sample_loop": {
            "samples_timed": loop_samples,
            "seconds": sec_l,
            "nfe": nfe_l,
            "seconds_per_hypothesis": per_hyp_l,
            "metrics": evaluate(looped, poses[sub]),
            "extrapolated_seconds_for_all": per_hyp_l * n * hypo,
        },
        "per_hypothesis_loop": official,
        "official_nfe_for_same_work": 200
        * hypo
        * math.ceil(n / 100),  # tester: batch 100, one call per hypothesis
        "speedup_per_hypothesis_vs_per_sample_loop": per_hyp_l / per_hyp_b,
    }


def bench_denoise(prior: DPoserPrior, frames: int) -> dict:
    seq = np.load(shared_data_dir() / "official" / "examples" / "Gestures_3_poses_batch005.npz")["pose_body"]
    pose = torch.as_tensor(seq[:frames], dtype=torch.float32)
    body = load_body("body")
    b22 = body.joint_set("body22")
    with torch.no_grad():
        gt = body(body_pose=pose, return_vertices=False).joints[:, b22]
    g = torch.Generator().manual_seed(0)
    obs = gt + 0.04 * torch.randn(gt.shape, generator=g)
    vis = torch.ones(frames, 22, dtype=torch.bool)
    schedule = dm.pick_schedule(0.04)
    out: dict = {
        "frames": frames,
        "noise_std_m": 0.04,
        "schedule": schedule.name,
        "body_model": body.kind,
        "official_nfe": schedule.steps,
    }
    for term in ("vertices", "joints"):
        fits: list[dm.MotionResult] = []
        m = speed.timed(
            device(), speed.denoising(prior, body, obs, vis, schedule=schedule, temporal=term, out=fits)
        )
        out[f"temporal_{term}"] = {
            "seconds": m["seconds"],
            "nfe": int(m["nfe"]),
            "frames_per_second": frames / m["seconds"],
            **dm.motion_metrics(obs, fits[0].joints, gt, vis, False),
        }
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--n", type=int, default=None, help="poses to complete (default 1000; --quick 100)")
    p.add_argument("--hypo", type=int, default=10)
    p.add_argument(
        "--loop-samples", type=int, default=None, help="poses timed in the per-sample loop (default 20)"
    )
    p.add_argument("--frames", type=int, default=None, help="frames to denoise (default 240; --quick 60)")
    p.add_argument("--official-loop", action="store_true", help="also time one batched call per hypothesis")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prior, trained = _prior(args.checkpoint)
    n, loop_samples, frames = (100, 3, 60) if args.quick else (1000, 20, 240)
    n, loop_samples, frames = args.n or n, args.loop_samples or loop_samples, args.frames or frames
    report = {
        "benchmark": "complete",
        "env": environment(),
        "checkpoint": prior.source,
        "errors_meaningful": trained,
        "completion": bench_completion(prior, n, args.hypo, loop_samples, args.official_loop),
        "denoise_motion": bench_denoise(prior, frames),
    }
    write(report, args.out)


if __name__ == "__main__":
    main()
