"""Hand IK speed and accuracy: solves/s at batch 1 and 500 on the official 300-step budget (spec §11: 300
network evaluations per hand solve) and a smaller one, with the MPJPE at each (sparse and fingertip targets
from real hand poses, DPoser prior vs no prior / L2), plus the prior's share of a step.

Every timing is the `dposer benchmark speed` hand-IK workload (`evaluation.speed.ik_solve`, i.e.
`tasks.ik.solve_ik`) timed by the same harness (`evaluation.speed.timed`); errors are `tasks.ik.evaluate_ik`.

    python -m bench.bench_ik --out bench/results/ik.json [--budgets 300 100] [--quick]
"""

import time
from pathlib import Path

import numpy as np
import torch

from bench._common import device, environment, parser, write
from dposer_cli.bodies import load_body
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.engine.priors import build_prior
from dposer_cli.evaluation import speed
from dposer_cli.tasks import ik


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--budgets", type=int, nargs="+", default=[300, 100])
    p.add_argument("--types", nargs="+", default=["sparse", "fingertip"])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--body-model", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 100] if args.quick else [1, 500]
    body = load_body("hand", args.body_model)
    prior = build_prior("dposer", Part.hand, checkpoint=args.checkpoint)
    priors = {
        "dposer": prior,
        "none": None,
        "l2": ik.ik_prior(Part.hand, {Part.hand: build_prior("l2", Part.hand)}, scale=ik.PRIOR_SCALES["l2"]),
    }
    data = np.load(shared_data_dir() / "poses" / "hand_reference_train.npz")["poses"]
    rng = np.random.default_rng(0)
    report: dict = {
        "benchmark": "ik",
        "env": environment(),
        "checkpoint": prior.source,
        "body_model": body.kind,
        "note": "errors are on poses from hand_reference_train.npz (the prior's own training data)",
        "runs": [],
    }
    for batch in batches:
        poses = torch.as_tensor(data[rng.choice(len(data), batch, replace=False)])
        base = ik.problem_from_params(Part.hand, body, {"hand_pose": poses})
        for ik_type in args.types:
            for steps in args.budgets:
                for kind, term in priors.items():
                    if batch == 1 and kind != "dposer":
                        continue  # speed at batch 1 is the prior's; baselines only for the error table
                    problem = ik.apply_type(base, ik_type, generator=torch.Generator().manual_seed(0))
                    results: list[ik.IKResult] = []
                    m = speed.timed(
                        device(),
                        speed.ik_solve(problem, body, term, ik_type=ik_type, steps=steps, out=results),
                    )
                    sec = m["seconds"]
                    errors = ik.evaluate_ik(problem, body, results[0])
                    report["runs"].append(
                        {
                            "batch": batch,
                            "type": ik_type,
                            "steps": steps,
                            "prior": kind,
                            "nfe": int(m["nfe"]),
                            "seconds": sec,
                            "solves_per_s": batch / sec,
                            "ms_per_step": 1000 * sec / steps,
                            **{k: v for k, v in errors.items() if k != "target_error_mm"},
                        }
                    )
    # the prior's share of one step at the largest batch: one network evaluation vs the whole step
    x = torch.zeros(batches[-1], 45)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(20):
            prior.loss(x, 0.1, weighting="none")
    report["prior_ms_per_eval_at_max_batch"] = 1000 * (time.perf_counter() - t0) / 20
    write(report, args.out)


if __name__ == "__main__":
    main()
