"""Thread count vs speed: the measurements behind `core.device.configure_threads`' policy (issue #16).

    python -m bench.bench_threads [--out bench/results/threads.json] [--quick] [--max-threads N]

Wall time of the work dposer does per call, at 1 thread and at 2 (and more, up to --max-threads, where
the machine has the cores), measured alternately in rounds so that changes in the machine's load hit
every thread count alike (best of the rounds is kept):

* `prior net`: one evaluation of the demo body prior's network (no autograd), batch 1, 10, 100, 1000;
* `prior loss+grad`: the DPoser loss with its gradient, as the fitting loop calls it, batch 1, 10, 100;
* `body fwd+bwd`: the mannequin body, joints only, gradients for pose and betas, batch 1, 10, 100;
* `train step`: one DSM training step of the demo width (512/256), batch 256 and 1280.

`speedup` is the 1-thread time over the row's time (above 1: more threads help). The load average at
the start and the end is recorded: on a busy machine extra threads mostly wait for a core.
"""

import os
import time
from collections.abc import Callable

import torch

from bench._common import environment, parser, write


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cases(quick: bool) -> list[tuple[str, int, Callable[[], None]]]:
    from dposer_cli.bodies.mannequin import MannequinBody
    from dposer_cli.core.config import SDEConfig
    from dposer_cli.core.parts import Part
    from dposer_cli.engine.nets import TimeFC
    from dposer_cli.engine.prior import DPoserPrior
    from dposer_cli.engine.sde import build_sde

    prior = DPoserPrior.load(Part.body)
    body = MannequinBody()
    g = torch.Generator().manual_seed(0)
    cases: list[tuple[str, int, Callable[[], None]]] = []

    for b in [1, 10, 1000] if quick else [1, 10, 100, 1000]:
        x, t = torch.randn(b, prior.dim, generator=g), torch.full((b,), 0.5)

        def net(x: torch.Tensor = x, t: torch.Tensor = t) -> None:
            with torch.no_grad():
                prior.eps(x, t)

        cases.append(("prior net", b, net))
    for b in [1, 10] if quick else [1, 10, 100]:
        pose = torch.randn(b, prior.dim, generator=g) * 0.3

        def loss(pose: torch.Tensor = pose) -> None:
            p = pose.clone().requires_grad_(True)
            prior.loss(p, 0.1, generator=torch.Generator().manual_seed(1)).sum().backward()

        cases.append(("prior loss+grad", b, loss))
    for b in [1, 10] if quick else [1, 10, 100]:
        params = {
            "body_pose": torch.randn(b, 63, generator=g) * 0.3,
            "betas": torch.randn(b, 10, generator=g),
        }

        def fit_body(params: dict[str, torch.Tensor] = params) -> None:
            p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
            body(**p, return_vertices=False).joints.square().sum().backward()

        cases.append(("body fwd+bwd", b, fit_body))
    sde = build_sde(SDEConfig())
    data = torch.randn(20000, 63, generator=g)
    for b in [256] if quick else [256, 1280]:
        net_ = TimeFC(63, 63, 512, 256)
        opt = torch.optim.RAdam(net_.parameters(), lr=2e-4)

        def step(b: int = b, net_: torch.nn.Module = net_, opt: torch.optim.Optimizer = opt) -> None:
            x0 = data[torch.randint(0, len(data), (b,), generator=g)]
            tt = torch.rand(b, generator=g) * (1 - 1e-5) + 1e-5
            z = torch.randn(x0.shape, generator=g)
            a, s = sde.marginal(tt)
            loss = (net_(a[:, None] * x0 + s[:, None] * z, sde.label(tt)) - z).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        cases.append(("train step", b, step))
    return cases


def _wall(fn: Callable[[], None], seconds: float) -> float:
    """Mean wall seconds per call over about `seconds` of calls (at least 3 calls)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--max-threads", type=int, default=2, help="largest thread count tried (capped at the cores)"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (best kept)")
    args = p.parse_args()
    counts = sorted({1, *range(2, min(args.max_threads, max(_cores(), 2)) + 1)})
    load_start = os.getloadavg()
    rows = []
    for work, batch, fn in _cases(args.quick):
        best = dict.fromkeys(counts, float("inf"))
        for _ in range(1 if args.quick else args.rounds):
            for n in counts:
                torch.set_num_threads(n)
                best[n] = min(best[n], _wall(fn, 0.3 if args.quick else 1.0))
        for n in counts:
            rows.append(
                {
                    "work": work,
                    "batch": batch,
                    "threads": n,
                    "ms": round(1e3 * best[n], 3),
                    "speedup": round(best[1] / best[n], 3),
                }
            )
    torch.set_num_threads(1)
    report = {
        "benchmark": "threads",
        "env": {**environment(), "cores": _cores(), "threads": counts},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "notes": "ms: wall time per call, best of alternating rounds; speedup: 1-thread ms / this ms",
        "results": rows,
    }
    write(report, args.out)


if __name__ == "__main__":
    main()
