"""fit-image throughput: fits per second for 1, 16 and 128 persons per batch, batched vs one at a time,
for the default body (mannequin) and the SMPL-X test fixture; share of each iteration spent in the prior.

Synthetic people (real poses from shared/data, the default body, a known camera) are written as
OpenPose JSON and fitted through the service (`dposer fit-image` without overlays). The fit time is the
service's own `fit_seconds` (optimisation only, no file I/O). One-at-a-time is measured on a few
persons and extrapolated. `--steps` (iterations per stage) defaults to 10 to keep CPU runs short:
throughput at the default 100 steps is ≈ the figure here × 65/650 (the iteration count scales linearly).

    .venv/bin/python -m bench.bench_fit --out bench/results/fit.json [--quick] [--steps 10]
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._common import environment, parser, write


def _prior(folder: Path) -> Path | None:
    """The bundled demo prior, else an untrained one of the same width (timing does not depend on weights)."""
    from dposer_cli.core.config import NetConfig, PriorConfig
    from dposer_cli.core.parts import PARTS, Part
    from dposer_cli.core.paths import demo_checkpoint
    from dposer_cli.engine.checkpoint import save_checkpoint
    from dposer_cli.engine.nets import build_net

    if demo_checkpoint(Part.body).is_file():
        return None
    spec = PARTS[Part.body]
    cfg = PriorConfig(part="body", net=NetConfig(dim=spec.dim, hidden_dim=spec.demo_hidden, embed_dim=spec.demo_embed))
    net = build_net(cfg.net)
    stats = {"mean": torch.zeros(spec.dim), "std": torch.full((spec.dim,), 0.3)}
    return save_checkpoint(folder / "body.pt", part=Part.body, config=cfg, model=net.state_dict(), ema=None,
                           normalizer=stats)


def _scene_files(folder: Path, n: int, seed: int) -> tuple[Path, Path, float]:
    from tests.services.test_fit_image import (
        reference_poses,
        synthetic_scene,
        write_blank_image,
        write_keypoints,
    )

    poses = reference_poses()
    rng = np.random.default_rng(seed)
    scene = synthetic_scene(poses[rng.choice(len(poses), n, replace=False)], seed=seed, width=max(1280, 160 * n),
                            height=720)
    img = write_blank_image(folder / f"s{n}_{seed}.png", scene.width, scene.height)
    kp = write_keypoints(folder / f"s{n}_{seed}.json", scene.keypoints, "openpose")
    return img, kp, scene.focal


def _fit(img: Path, kp: Path, focal: float, *, steps: int, prior: str, checkpoint: Path | None,
         body_model: Path | None, out: Path, person: str = "all") -> dict:
    from dposer_cli.core.parts import Part
    from dposer_cli.services import fit_image as svc

    req = svc.FitImageRequest(images=(img,), keypoints=(kp,), part=Part.body, out=out, focal=focal, steps=steps,
                              prior=prior, checkpoint=checkpoint, body_model=body_model, device="cpu",
                              overlay=False, person=person)
    return svc.run(req).info


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="Adam iterations per stage (default 10)")
    p.add_argument("--singles", type=int, default=4, help="persons fitted one at a time per size (extrapolated)")
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement; the fastest counts (shared CPUs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [1, 16] if args.quick else [1, 16, 128]
    steps = 4 if args.quick else args.steps
    report: dict = {"benchmark": "fit_image", "environment": environment(), "steps_per_stage": steps,
                    "iterations_per_fit": steps // 2 + steps + 5 * steps, "results": []}
    with tempfile.TemporaryDirectory(prefix="dposer-bench-fit-") as tmp:
        tmp = Path(tmp)
        checkpoint = _prior(tmp)
        report["prior"] = "demo" if checkpoint is None else "untrained, demo width"
        from tests._fixtures.body_models import write_smplx

        bodies = {"mannequin": None, "smplx-fixture": write_smplx(tmp / "smplx")}
        for body, body_model in bodies.items():
            for n in sizes:
                img, kp, focal = _scene_files(tmp, n, seed=n)
                kw = {"steps": steps, "checkpoint": checkpoint, "body_model": body_model, "out": tmp / "out"}
                _fit(img, kp, focal, prior="none", **{**kw, "steps": 1})  # warm-up (model load, allocator)
                batched = min((_fit(img, kp, focal, prior="dposer", **kw) for _ in range(args.repeat)),
                              key=lambda info: info["fit_seconds"])
                plain = min((_fit(img, kp, focal, prior="none", **kw) for _ in range(args.repeat)),
                            key=lambda info: info["fit_seconds"])
                singles = [min(_fit(img, kp, focal, prior="dposer", person=str(i), **kw)["fit_seconds"]
                               for _ in range(args.repeat)) for i in range(min(n, args.singles))]
                single_s = float(np.mean(singles))
                row = {
                    "body": body, "persons": n,
                    "batched_seconds": batched["fit_seconds"],
                    "batched_fits_per_second": n / batched["fit_seconds"],
                    "one_at_a_time_seconds_per_fit": single_s,
                    "one_at_a_time_fits_per_second": 1 / single_s,
                    "speedup_batched_vs_one_at_a_time": single_s * n / batched["fit_seconds"],
                    "prior_share_of_iteration": batched["prior_seconds"] / batched["fit_seconds"],
                    "no_prior_seconds": plain["fit_seconds"],
                    "prior_overhead_vs_no_prior": batched["fit_seconds"] / plain["fit_seconds"] - 1,
                    "nfe": batched["nfe"],
                    "ms_per_iteration": 1000 * batched["fit_seconds"] / report["iterations_per_fit"],
                }
                report["results"].append(row)
                print(f"{body:14s} {n:4d} persons: {row['batched_fits_per_second']:.3f} fits/s batched, "
                      f"{row['one_at_a_time_fits_per_second']:.3f} one at a time "
                      f"(×{row['speedup_batched_vs_one_at_a_time']:.1f}), prior {100 * row['prior_share_of_iteration']:.0f}%",
                      flush=True)
    write(report, args.out)


if __name__ == "__main__":
    main()
