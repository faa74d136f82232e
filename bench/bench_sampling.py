"""Sampler speed and quality: NFE, samples/s at batch 1/50/2000 (EM-1000 vs fast samplers), loop overhead
over the bare network, and FID of each sampler's samples against the part's reference poses (spec §8.1).

Each run is the `dposer benchmark speed` generation workload (`evaluation.speed.sampling`, i.e. `tasks.sample`)
timed by the same harness (`evaluation.speed.best_of`), swept over batch sizes and samplers.

    python -m bench.bench_sampling --parts body hand --out bench/results/sampling.json
"""

import time

import numpy as np
import torch

from bench._common import device, environment, parser, timeit, write
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.evaluation import speed
from dposer_cli.metrics import fid, gaussian_stats, prdc
from dposer_cli.tasks.sample import sample


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--parts", nargs="+", default=["body", "hand"])
    p.add_argument("--fid-samples", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 50] if args.quick else [1, 50, 2000]
    configs = {"em": 1000, "ddim": 50, "dpm2m": 25}
    report: dict = {"benchmark": "sampling", "env": environment(), "parts": {}}
    for name in args.parts:
        part = Part(name)
        prior = DPoserPrior.load(part)
        out: dict = {"checkpoint": prior.source, "speed": [], "quality": {}}
        # bare network time per evaluation, same batch, same process: the baseline for loop overhead
        for b in batches:
            x = torch.randn(b, prior.dim)
            t = torch.full((b,), 0.5)
            with torch.no_grad():
                net_s = timeit(lambda prior=prior, x=x, t=t: prior.eps(x, t), repeat=5)
            for sampler, steps in configs.items():
                if b == 2000 and sampler == "em" and args.quick:
                    continue
                m = speed.best_of(
                    device(), speed.sampling(prior, b, sampler=sampler, steps=steps), repeat=1, warmup=0
                )
                sec, nfe = m["seconds"], int(m["nfe"])
                out["speed"].append(
                    {
                        "batch": b,
                        "sampler": sampler,
                        "nfe": nfe,
                        "seconds": sec,
                        "samples_per_s": b / sec,
                        "net_seconds_per_eval": net_s,
                        "loop_overhead": sec / (nfe * net_s) - 1.0,
                    }
                )
        ref_path = shared_data_dir() / PARTS[part].reference
        if ref_path.is_file():
            ref = np.load(ref_path)["poses"] if "poses" in np.load(ref_path) else None
            if ref is not None:
                mu, sigma = gaussian_stats(ref)
                n = min(args.fid_samples, len(ref))
                for sampler, steps in configs.items():
                    g = torch.Generator().manual_seed(1)
                    t0 = time.perf_counter()
                    s = sample(prior, n, sampler=sampler, steps=steps, generator=g).poses.numpy()
                    pr = prdc(ref[:n], s, k=3)
                    out["quality"][sampler] = {
                        "nfe": steps,
                        "fid_vs_train_reference": fid(s, mu=mu, sigma=sigma),
                        "precision": pr["precision"],
                        "recall": pr["recall"],
                        "n": n,
                        "seconds": time.perf_counter() - t0,
                    }
        report["parts"][name] = out
    write(report, args.out)


if __name__ == "__main__":
    main()
