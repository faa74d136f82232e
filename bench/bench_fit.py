"""fit-image throughput: fits per second for 1, 16 and 128 persons per batch, batched vs one at a time,
for the default body (mannequin) and the SMPL-X test fixture; the same batch through the fit-image service on
files (reading images and keypoint JSON, writing npz); and, at the smallest and largest batch, an eager
iteration split into body forward, prior, backward, optimiser and the rest (`DPOSER_TRACE=0`: a replayed step
runs as one recording and has no parts to time), beside the replayed iteration's time.

Synthetic upright people (the speed harness's `evaluation.speed.synthetic_people`, one per 640×480 image)
are fitted by the `dposer benchmark speed` fit-image workload (`evaluation.speed.fitting`, i.e.
`tasks.fit.fit`); the fit time is the task's own `fit_seconds` (optimisation only). One-at-a-time is
measured on a few persons and extrapolated. The I/O figure runs `services.fit_image` on the same people
written as PNG + OpenPose JSON (the benchmark's `fit_files`). `--steps` (iterations per stage) defaults to
10 to keep CPU runs short: throughput at the default 100 steps is ≈ the figure here × 65/650 (the iteration
count scales linearly).

    .venv/bin/python -m bench.bench_fit --out bench/results/fit.json [--quick] [--steps 10]
"""

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._common import device, environment, parser, write
from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import demo_checkpoint
from dposer_cli.core.trace import TRACE_ENV
from dposer_cli.engine.checkpoint import save_checkpoint
from dposer_cli.engine.nets import build_net
from dposer_cli.engine.optimize import Adam
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.evaluation import FileFit, speed
from dposer_cli.services.benchmark import fit_files
from dposer_cli.tasks.fit import FitInput, FitResult
from tests._fixtures.body_models import write_smplx


def _prior(folder: Path) -> tuple[DPoserPrior, str]:
    """The bundled demo prior, else an untrained one of the same width (timing does not depend on weights)."""
    if demo_checkpoint(Part.body).is_file():
        return DPoserPrior.load(Part.body), "demo"
    spec = PARTS[Part.body]
    cfg = PriorConfig(
        part="body", net=NetConfig(dim=spec.dim, hidden_dim=spec.demo_hidden, embed_dim=spec.demo_embed)
    )
    net = build_net(cfg.net)
    stats = {"mean": torch.zeros(spec.dim), "std": torch.full((spec.dim,), 0.3)}
    path = save_checkpoint(
        folder / "body.pt", part=Part.body, config=cfg, model=net.state_dict(), ema=None, normalizer=stats
    )
    return DPoserPrior.load(Part.body, path), "untrained, demo width"


def _rows(inputs: FitInput, rows: slice) -> FitInput:
    return FitInput(inputs.keypoints[rows], inputs.focal[rows], inputs.center[rows], inputs.image_size[rows])


def _best_fit(
    body: BodyModel, prior: DPoserPrior | None, inputs: FitInput, steps: int, repeat: int
) -> FitResult:
    """The run with the shortest optimisation time of `repeat` runs."""
    done: list[FitResult] = []
    for _ in range(repeat):
        speed.fitting(body, prior, inputs, steps=steps, out=done)()
    return min(done, key=lambda r: r.fit_seconds)


def _stage_split(body: BodyModel, prior: DPoserPrior, inputs: FitInput, steps: int) -> dict[str, float]:
    """Milliseconds per iteration of an eager fit (`DPOSER_TRACE=0`: a replayed step runs as one recording, so
    only eager steps can be split): the body model's forward, the prior's loss, the backward pass, the optimiser,
    and the rest (loss terms, the mannequin's re-anchoring of free betas before a step, Python); `total`, their
    sum."""
    spent: defaultdict[str, float] = defaultdict(float)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return call

    saved = os.environ.get(TRACE_ENV)
    patches = [
        (body, "forward", "body_forward"),
        (prior, "loss", "prior"),
        (torch.autograd, "grad", "backward"),
        (Adam, "step", "optimiser"),
    ]
    # what each owner holds itself is put back; what an instance inherits from its class is only shadowed
    own = [(owner, name, vars(owner).get(name)) for owner, name, _ in patches]
    os.environ[TRACE_ENV] = "0"
    try:
        for owner, name, label in patches:
            setattr(owner, name, timed(label, getattr(owner, name)))
        result = _best_fit(body, prior, inputs, steps, 1)
    finally:
        for owner, name, held in own:
            if held is None:
                delattr(owner, name)
            else:
                setattr(owner, name, held)
        if saved is None:
            os.environ.pop(TRACE_ENV, None)
        else:
            os.environ[TRACE_ENV] = saved
    iterations = steps // 2 + steps + 5 * steps
    split = {k: 1000 * v / iterations for k, v in spent.items()}
    split["rest"] = 1000 * result.fit_seconds / iterations - sum(split.values())
    split["total"] = 1000 * result.fit_seconds / iterations
    return split


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="Adam iterations per stage (default 10)")
    p.add_argument(
        "--singles", type=int, default=4, help="persons fitted one at a time per size (extrapolated)"
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="runs per measurement; the fastest counts (shared CPUs)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [1, 16] if args.quick else [1, 16, 128]
    steps = 4 if args.quick else args.steps
    report: dict = {
        "benchmark": "fit_image",
        "environment": environment(),
        "steps_per_stage": steps,
        "iterations_per_fit": steps // 2 + steps + 5 * steps,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="dposer-bench-fit-") as tmp:
        tmp = Path(tmp)
        prior, report["prior"] = _prior(tmp)
        scene_body = load_body("body")  # the people are posed and projected with the default body
        bodies = {"mannequin": None, "smplx-fixture": write_smplx(tmp / "smplx")}
        for name, body_model in bodies.items():
            body = load_body("body", body_model)
            for n in sizes:
                inputs = speed.synthetic_people(scene_body, n, seed=n)
                speed.fitting(body, None, inputs, steps=1)()  # warm-up (allocator, first-call costs)
                batched = _best_fit(body, prior, inputs, steps, args.repeat)
                plain = _best_fit(body, None, inputs, steps, args.repeat)
                singles = [
                    _best_fit(body, prior, _rows(inputs, slice(i, i + 1)), steps, args.repeat).fit_seconds
                    for i in range(min(n, args.singles))
                ]
                single_s = float(np.mean(singles))
                folder = tmp / f"{name}-{n}"
                images, keypoints = speed.write_people(folder, inputs)
                job = FileFit(
                    tuple(images),
                    tuple(keypoints),
                    folder / "out",
                    Part.body,
                    steps,
                    prior,
                    body_model,
                    str(device()),
                    0,
                )
                io = min(
                    (speed.timed(device(), speed.fitting_files(fit_files, job)) for _ in range(args.repeat)),
                    key=lambda m: m["seconds"],
                )
                split = _stage_split(body, prior, inputs, steps) if n in (1, max(sizes)) else None
                row = {
                    "body": name,
                    "persons": n,
                    "batched_seconds": batched.fit_seconds,
                    "batched_fits_per_second": n / batched.fit_seconds,
                    "one_at_a_time_seconds_per_fit": single_s,
                    "one_at_a_time_fits_per_second": 1 / single_s,
                    "speedup_batched_vs_one_at_a_time": single_s * n / batched.fit_seconds,
                    # the prior's share of an eager iteration (replayed steps do not count their prior apart)
                    "prior_share_of_eager_iteration": None
                    if split is None
                    else split["prior"] / split["total"],
                    "no_prior_seconds": plain.fit_seconds,
                    "prior_overhead_vs_no_prior": batched.fit_seconds / plain.fit_seconds - 1,
                    "nfe": batched.nfe,
                    "ms_per_iteration": 1000 * batched.fit_seconds / report["iterations_per_fit"],
                    "with_io_seconds": io["seconds"],
                    "with_io_fits_per_second": n / io["seconds"],
                    # an eager iteration's parts (replayed steps cannot be split), next to `ms_per_iteration`
                    "eager_split_ms_per_iteration": split,
                }
                report["results"].append(row)
                print(
                    f"{name:14s} {n:4d} persons: {row['batched_fits_per_second']:.3f} fits/s batched "
                    f"({row['with_io_fits_per_second']:.3f} with file I/O), "
                    f"{row['one_at_a_time_fits_per_second']:.3f} one at a time "
                    f"(×{row['speedup_batched_vs_one_at_a_time']:.1f}); {row['ms_per_iteration']:.2f} ms per "
                    "iteration replayed",
                    flush=True,
                )
                if split is not None:
                    parts = ", ".join(f"{k} {v:.2f}" for k, v in split.items())
                    print(f"{'':14s} {'':4s} eager iteration, ms: {parts}", flush=True)
    write(report, args.out)


if __name__ == "__main__":
    main()
