"""Training throughput: steps/s of the DSM training step for the official width (1024/512) and the demo width
(512/256) at batch 256 and 1280, on the current device. Data are device-resident tensors (indexing only), and
the data-indexing share of a step is reported so a data bottleneck would show.

    python -m bench.bench_train --out bench/results/train.json
"""

import time

import torch

from bench._common import environment, parser, timeit, write
from dposer_cli.core.config import SDEConfig
from dposer_cli.engine.ema import EMA
from dposer_cli.engine.nets import TimeFC
from dposer_cli.engine.sde import SDE, build_sde


def _measure(
    sde: SDE, data: torch.Tensor, hidden: int, embed: int, batch: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """Seconds per training step and per data-indexing step (best of 2 runs of `steps`)."""
    net = TimeFC(63, 63, hidden, embed).to(device)
    opt = torch.optim.RAdam(net.parameters(), lr=2e-4)
    ema = EMA(net)
    g = torch.Generator(device=device).manual_seed(0)

    def index() -> torch.Tensor:
        return data[torch.randint(0, len(data), (batch,), generator=g, device=device)]

    def step() -> None:
        x0 = index()
        t = torch.rand(batch, generator=g, device=device) * (1 - 1e-5) + 1e-5
        z = torch.randn(x0.shape, generator=g, device=device)
        a, s = sde.marginal(t)
        loss = (net(a[:, None] * x0 + s[:, None] * z, sde.label(t)) - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(net)

    sec = timeit(lambda: [step() for _ in range(steps)], repeat=2) / steps
    idx = timeit(lambda: [index() for _ in range(steps)], repeat=2) / steps
    return sec, idx


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sde = build_sde(SDEConfig())
    data = torch.randn(20000, 63, device=device)
    rows = []
    widths = [(512, 256)] if args.quick else [(1024, 512), (512, 256)]
    batches = [256] if args.quick else [256, 1280]
    for hidden, embed in widths:
        for batch in batches:
            sec, idx = _measure(sde, data, hidden, embed, batch, args.steps, device)
            rows.append(
                {
                    "hidden": hidden,
                    "embed": embed,
                    "batch": batch,
                    "seconds_per_step": sec,
                    "steps_per_s": 1 / sec,
                    "data_indexing_share": idx / sec,
                }
            )
    write(
        {
            "benchmark": "train",
            "env": environment(),
            "device": str(device),
            "rows": rows,
            "when": time.strftime("%Y-%m-%d %H:%M"),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
