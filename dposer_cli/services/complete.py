"""`dposer complete`: fill in masked joints / coefficients with the prior, H hypotheses per input (spec §6.4, §7.2–7.3).

Which entries are missing: named mask groups (`--mask legs`), joint indices (`--mask-joints 0,3`), or NaN
entries in the input. The completion itself is `tasks.complete.complete` (all N inputs × H hypotheses in one
batched run; visible entries returned bit-for-bit unchanged). When the input is complete and the mask was
named, the input is its own ground truth and the §8.2 metrics are reported.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dposer_cli.bodies import load_body
from dposer_cli.core import validate
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.baselines import BaselinePrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.export import write_bvh, write_meshes
from dposer_cli.io.poses import read_poses, write_poses
from dposer_cli.services._render import completion_sheet, load_part_body
from dposer_cli.tasks.complete import (
    CHUNK,
    check_options,
    complete,
    completion_metrics,
    metric_body,
    resolve_masking,
)
from dposer_cli.tasks.export import SkeletonMotion, check_formats, export_data, part_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompleteRequest:
    input: Path
    part: Part = Part.body
    masks: tuple[str, ...] = ()  # mask group names of PARTS[part].mask_groups (or aliases)
    mask_joints: tuple[int, ...] = ()  # indices into PARTS[part].joint_names (3 dims each)
    hypo: int = 1
    out: Path = Path("dposer_out")
    mode: str = "dposer"
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint: Path | None = None
    normalizer: Path | None = None
    render: bool = False
    renderer: str = "auto"
    body_model: Path | None = None
    export: tuple[str, ...] = ()  # also write completed.glb / .obj / .ply / .bvh (N × H bodies, input-major)


def run(
    req: CompleteRequest,
    progress: Callable[[int, int], None] | None = None,
    *,
    prior: DPoserPrior | BaselinePrior | None = None,
) -> Result:
    """Run the command; `prior` overrides --checkpoint (Python API: any prior of the right part)."""
    t0 = time.perf_counter()
    check_options(req.mode, req.hypo, req.steps)
    formats = check_formats(req.export, part=req.part)
    pf = read_poses(Path(req.input), req.part, allow_nan=True)
    device = resolve_device(req.device)
    poses = torch.as_tensor(np.asarray(pf.poses, dtype=np.float32), device=device)
    if poses.ndim != 2 or poses.shape[0] == 0:
        raise InputError(f"{req.input}: no poses to complete (shape {tuple(poses.shape)})")
    _check_memory(req, len(poses))
    masking = resolve_masking(
        req.part, poses, tuple(req.masks), tuple(req.mask_joints), where=str(req.input), keys=tuple(pf.keys)
    )
    out_dir = ensure_out_dir(req.out)
    if prior is None:
        prior = DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    elif prior.part is not req.part:
        raise InputError(f"the given prior is for --part {prior.part.value}, not {req.part.value}")
    log.info("using %s prior (%s)", req.part.value, prior.source)
    export_body = load_part_body(req.part, req.body_model, device) if formats else None  # a face needs FLAME

    t_run = time.perf_counter()
    res = complete(
        prior,
        poses,
        masking.observed,
        hypo=req.hypo,
        mode=req.mode,
        steps=req.steps,
        generator=make_generator(req.seed, device),
        progress=progress,
    )
    run_seconds = time.perf_counter() - t_run
    completed = res.poses
    if not torch.isfinite(completed).all():
        other = "--mode dposer" if req.mode != "dposer" else "another --mode"
        raise InputError(f"--mode {req.mode} produced non-finite values; try {other} or more --steps")

    n, h, dim = completed.shape
    array = completed.cpu().numpy()
    outputs: dict[str, Path | list[Path]] = {
        "completed": write_poses(
            out_dir / "completed.npz",
            req.part,
            array if h > 1 else array[:, 0],
            extras=pf.extras,
            keys_like=pf,
        ),
    }
    if export_body is not None:  # --export: every hypothesis of every input (row i·H + h)
        flat = part_params(req.part, completed.reshape(n * h, dim))
        for fmt, data in export_data(export_body, flat, formats, name="completed").items():
            outputs[f"export_{fmt}"] = (
                write_bvh(out_dir / "completed.bvh", *data.bvh_args())
                if isinstance(data, SkeletonMotion)
                else write_meshes(out_dir / "completed", data.vertices, data.faces, fmt)
            )
    metrics: dict[str, float] = {}
    info: dict = {}
    if masking.has_truth:
        kind = metric_body(req.part, masking.dims)
        body = load_body(kind, req.body_model, device) if kind is not None else None
        metrics, info = completion_metrics(req.part, completed, poses, masking.dims, body)
    metrics["hypotheses_per_second"] = n * h / max(run_seconds, 1e-9)
    if req.render:
        hidden = (~masking.observed).expand(n, dim)
        what = ", ".join(req.masks) or (
            f"joints {','.join(map(str, req.mask_joints))}" if req.mask_joints else "the NaN entries"
        )
        grid = completion_sheet(
            req.part,
            poses,
            completed,
            hidden,
            truth=masking.has_truth,
            path=out_dir / "completed.png",
            body_model=req.body_model,
            renderer=req.renderer,
            device=device,
            title=f"complete --part {req.part.value}: {what} missing, "
            f"{h} hypothes{'is' if h == 1 else 'es'} per input",
        )
        if grid is not None:
            outputs["grid"] = grid
    masked = int((~masking.observed).sum())
    lines = [
        (
            f"completed {n} {req.part.value} pose(s) × {h} hypothes{'is' if h == 1 else 'es'} with --mode "
            f"{req.mode} ({res.nfe} network evaluations, {masked} masked entries) from {prior.source}"
        )
    ]
    return Result(
        command="complete",
        outputs=outputs,
        metrics=metrics,
        info={
            "part": req.part.value,
            "n": n,
            "hypo": h,
            "mode": req.mode,
            "steps": res.steps,
            "nfe": res.nfe,
            "mask": list(req.masks) or None,
            "mask_joints": list(req.mask_joints) or None,
            "mask_source": masking.source,
            "masked_entries": masked,
            "checkpoint": prior.source,
            "seed": req.seed,
            "device": str(device),
            **info,
        },
        seconds=time.perf_counter() - t0,
        lines=lines,
    )


def _check_memory(req: CompleteRequest, n: int) -> None:
    """N × H hypotheses: the results (twice: chunks and their concatenation) and one chunk's sampler
    working set (`tasks.complete.CHUNK` vectors; network width: the part's widest prior) must fit."""
    spec, h = PARTS[req.part], req.hypo
    chunk = min(n, max(1, CHUNK // h)) * h
    validate.memory(
        f"{n}×{h} hypotheses",
        validate.sample_bytes(chunk, dim=spec.dim, width=spec.official_hidden)
        + validate.sample_bytes(n * h, dim=spec.dim, copies=2),
        hint="complete fewer poses at once, or ask for fewer --hypo",
    )
