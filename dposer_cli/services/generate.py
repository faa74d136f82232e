"""`dposer generate`: sample poses from the prior, save them (npz, optional JSON) and render a grid."""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import atomic_write, ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine import samplers as smp
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.poses import write_poses
from dposer_cli.io.report import jsonable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateRequest:
    part: Part
    n: int = 10
    out: Path = Path("dposer_out")
    sampler: str = "dpm2m"
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint: Path | None = None
    normalizer: Path | None = None
    render: bool = True
    renderer: str = "auto"
    body_model: Path | None = None
    poses_json: bool = False
    t_end: float = 1e-3


def run(req: GenerateRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    t0 = time.perf_counter()
    if req.n < 1:
        raise InputError(f"-n must be at least 1 (got {req.n})")
    if req.sampler not in smp.SAMPLERS:
        from dposer_cli.core.errors import suggest

        raise InputError(f"unknown sampler {req.sampler!r}{suggest(req.sampler, list(smp.SAMPLERS))}",
                         hint="samplers: " + ", ".join(smp.SAMPLERS))
    if req.steps is not None and req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    out = ensure_out_dir(req.out)
    device = resolve_device(req.device)
    prior = DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    log.info("using %s prior (%s)", req.part.value, prior.source)
    steps = req.steps or smp.DEFAULT_STEPS[req.sampler]
    gen = make_generator(req.seed, device)
    prior.nfe = 0
    t_sample = time.perf_counter()
    poses = prior.sample(req.n, sampler=req.sampler, steps=steps, generator=gen, progress=progress, t_end=req.t_end)
    sample_seconds = time.perf_counter() - t_sample
    nfe = prior.nfe
    if not torch.isfinite(poses).all():
        raise InputError("sampling produced non-finite values; try another --sampler or more --steps")

    outputs: dict[str, Path] = {"poses": write_poses(out / "poses.npz", req.part, poses.cpu().numpy())}
    if req.poses_json:
        slices = PARTS[req.part].slices()
        data = {k: poses[:, s].cpu().numpy() for k, s in slices.items()}
        with atomic_write(out / "poses.json", "w") as fh:
            json.dump(jsonable({"part": req.part.value, **data}), fh)
        outputs["poses_json"] = out / "poses.json"
    if req.render:
        grid = _render(req, poses, out, device)
        if grid is not None:
            outputs["grid"] = grid
    return Result(
        command="generate",
        outputs=outputs,
        metrics={"samples_per_second": req.n / max(sample_seconds, 1e-9)},
        info={"part": req.part.value, "n": req.n, "checkpoint": prior.source, "sampler": req.sampler,
              "steps": steps, "nfe": nfe, "seed": req.seed, "device": str(device)},
        seconds=time.perf_counter() - t0,
        lines=[f"sampled {req.n} {req.part.value} poses with {req.sampler} ({nfe} network evaluations) "
               f"from {prior.source}"],
    )


def _render(req: GenerateRequest, poses: torch.Tensor, out: Path, device: torch.device) -> Path | None:
    from dposer_cli.services._render import render_sheet

    return render_sheet(req.part, poses, out / "grid.png", body_model=req.body_model, renderer=req.renderer,
                        device=device)
