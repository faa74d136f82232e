"""`dposer benchmark NAME`: the paper's evaluations and a speed harness, as one JSON report.

Each evaluation (see `EVALUATIONS`) reads its dataset in the published on-disk layout (`--data-dir`), drives
the task services with the prior under test (`--prior dposer`, or the baselines `none`, `l2`, `gmm` through
the same interface), and reports metrics with the names and units of the paper's tables next to the
published numbers. Launched by `torchrun --nproc-per-node G -m dposer_cli benchmark ...` the dataset is
sharded over the G processes, per-sample results are gathered on every rank and rank 0 writes the report.
"""

import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dposer_cli import __version__
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import atomic_write
from dposer_cli.core.result import Result
from dposer_cli.services import (
    _bench_completion,
    _bench_denoise,
    _bench_generation,
    _bench_hmr,
    _bench_ik,
    _bench_speed,
)
from dposer_cli.services._bench_common import (
    NON_BODY_PRIORS,
    PAPER_ROW,
    PRIORS,
    BenchmarkRequest,
    Context,
    Outcome,
    report_path,
)
from dposer_cli.services._bench_paper import paper_value

log = logging.getLogger(__name__)

__all__ = ["EVALUATIONS", "PRIORS", "BenchmarkRequest", "Evaluation", "report_path", "run"]


@dataclass(frozen=True)
class Evaluation:
    """One named evaluation: how to run it, which parts and settings it takes, what `--data-dir` holds."""

    run: Callable[[Context], Outcome]
    summary: str
    parts: tuple[Part, ...]  # the first is the default --part
    data: str = ""  # layout of --data-dir; "" when the evaluation needs none
    settings: tuple[str, ...] = ()  # accepted --setting values ("" = the evaluation has none)
    priors: tuple[str, ...] = PRIORS


EVALUATIONS: dict[str, Evaluation] = {
    "generation": Evaluation(
        _bench_generation.run,
        "sample -n poses; FID vs --statistics/--reference, precision/recall/density/coverage, APD, dNN",
        parts=(Part.body, Part.hand, Part.face, Part.face_shape, Part.wholebody),
        priors=("dposer", "gmm", "vposer"),
    ),
    "speed": Evaluation(
        _bench_speed.run,
        "samples/s, fits/s, network evaluations and peak memory of generation and each task on this device",
        parts=(Part.body,),
        settings=_bench_speed.TASKS,
        priors=("dposer",),
    ),
    "completion": Evaluation(
        _bench_completion.run_body,
        "body pose completion: masked parts, min/mean/std over hypotheses of MPJPE/MPVPE (mm), APD (cm)",
        parts=(Part.body,),
        data="AMASS-style folder of body-pose .npz files (the AMASS test split)",
        settings=_bench_completion.BODY_CHOICES,
        priors=("dposer", "gmm", "l2", "vposer"),
    ),
    "denoise": Evaluation(
        _bench_denoise.run,
        "motion denoising on 60-frame HumanEva clips at 20/40/100 mm, or with legs/left_arm/right_body hidden",
        parts=(Part.body,),
        data="AMASS-style folder of HumanEva motion .npz files (cut into 60-frame clips)",
        settings=_bench_denoise.SETTINGS,
    ),
    "hand-ik": Evaluation(
        _bench_ik.run_hand,
        "hand inverse kinematics from sparse / fingertip / noisy 3D joints: MPJPE visible/occluded/all, MPVPE (mm)",
        parts=(Part.hand,),
        data="folder of hand-pose .npz files (hand_pose (N, 45); e.g. the ReInterHand test split)",
        settings=_bench_ik.HAND_SETTINGS,
        priors=NON_BODY_PRIORS,
    ),
    "face-ik": Evaluation(
        _bench_ik.run_face,
        "face inverse kinematics from noisy / half-occluded FLAME landmarks: MPVPE, MPJPE (mm); needs FLAME",
        parts=(Part.face,),
        data="folder of face .npz files (jaw_pose, expression[, betas]; e.g. the WCPA valid split)",
        settings=_bench_ik.FACE_SETTINGS,
        priors=NON_BODY_PRIORS,
    ),
    "ehf": Evaluation(
        _bench_hmr.run_ehf,
        "body mesh recovery on EHF from ViTPose keypoints: PA-MPJPE and MPJPE of 22 body joints (mm); needs SMPL-X",
        parts=(Part.body,),
        data="EHF folder: NN_img.jpg, NN_align.ply, vitpose_keypoints/predictions/NN_img.json",
    ),
    "freihand": Evaluation(
        _bench_hmr.run_freihand,
        "hand mesh recovery on FreiHAND (GT 2D keypoints): PA-MPJPE, PA-MPVPE (mm), F@5mm, F@15mm; needs MANO",
        parts=(Part.hand,),
        data="FreiHAND_pub_v2_eval folder: evaluation/rgb/*.jpg, evaluation_{K,xyz,verts}.json",
        priors=NON_BODY_PRIORS,
    ),
    "arctic": Evaluation(
        _bench_hmr.run_arctic,
        "whole-body mesh recovery on ARCTIC (s05, camera 4): PA-MPVPE all/hands/face, PA-MPJPE body/hands (mm); "
        "needs SMPL-X",
        parts=(Part.wholebody,),
        data="ARCTIC folder: images/s05/<action>/4/*.jpg, keypoints/mmpose_keypoints/s05/<action>/4/*.json, "
             "processed_verts/seqs/s05/<action>.npy, meta/misc.json",
        settings=_bench_hmr.ARCTIC_SETTINGS,
        priors=NON_BODY_PRIORS,
    ),
    "wholebody-completion": Evaluation(
        _bench_completion.run_wholebody,
        "whole-body completion with one random hand (or the face) masked: MPJPE/MPVPE min/mean/std (mm), APD (cm)",
        parts=(Part.wholebody,),
        data="folder of whole-body .npz files (body_pose, left/right_hand_pose, jaw_pose, expression)",
        settings=_bench_completion.WHOLEBODY_CHOICES,
        priors=("dposer", "gmm", "l2"),
    ),
}


def names_hint() -> str:
    return "evaluations: " + ", ".join(EVALUATIONS)


def lookup(name: str) -> Evaluation:
    """The evaluation called `name`; unknown names raise InputError with a suggestion and the list."""
    if name not in EVALUATIONS:
        raise InputError(f"unknown benchmark {name!r}{suggest(name, list(EVALUATIONS))}", hint=names_hint())
    return EVALUATIONS[name]


def _validate(req: BenchmarkRequest, ev: Evaluation) -> Part:
    part = Part(req.part) if req.part is not None else ev.parts[0]
    if part not in ev.parts:
        raise InputError(f"benchmark {req.name} takes --part {', '.join(p.value for p in ev.parts)}, "
                         f"not {part.value}")
    if req.prior not in ev.priors:
        raise InputError(f"benchmark {req.name} compares --prior {', '.join(ev.priors)}, not {req.prior!r}"
                         f"{suggest(req.prior, list(ev.priors))}")
    if ev.data and req.data_dir is None:
        raise InputError(f"benchmark {req.name} needs --data-dir ({ev.data})")
    for s in req.settings:
        if s not in ev.settings:
            valid = list(ev.settings)
            raise InputError(f"unknown --setting {s!r} for benchmark {req.name}{suggest(s, valid)}",
                             hint="settings: " + (", ".join(valid) if valid else "none"))
    for flag, value in (("--limit", req.limit), ("-n", req.n), ("--hypo", req.hypo), ("--batch-size", req.batch_size),
                        ("--stride", req.stride), ("--gmm-components", req.gmm_components)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1 (got {value})")
    return part


def versions() -> dict[str, str]:
    out = {"dposer": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import smplx

        out["smplx"] = getattr(smplx, "__version__", "installed")
    except ImportError:
        pass
    return out


def _rows(name: str, outcome: Outcome, prior: str) -> list[dict[str, Any]]:
    """Table rows: setting, metric, our value, the paper's value for the comparable method."""
    row = PAPER_ROW.get(prior, prior)
    out = []
    for setting, metrics in outcome.metrics.items():
        entry = outcome.paper.get(setting)
        for metric, value in metrics.items():
            if isinstance(value, int | float):
                out.append({"setting": setting, "metric": metric, "value": float(value),
                            "paper": paper_value(entry, row, metric), "paper_row": row,
                            "table": entry["table"] if entry else None})
    return out


def run(req: BenchmarkRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Run one evaluation and (on rank 0) write the JSON report atomically."""
    t0 = time.perf_counter()
    ev = lookup(req.name)
    part = _validate(req, ev)
    ctx = Context(req, part=part, progress=progress)
    try:
        outcome = ev.run(ctx)
        nfe = sum(ctx.gather([int(outcome.info.get("nfe", 0))]))  # network evaluations of all ranks
        seconds = time.perf_counter() - t0
        if ctx.rank != 0:
            return Result(command="benchmark", info={"benchmark": req.name, "rank": ctx.rank}, seconds=seconds)
        path = report_path(req)
        result = Result(
            command="benchmark",
            outputs={"report": path, **outcome.outputs},
            metrics=outcome.metrics,
            info={
                "benchmark": req.name, "part": part.value, "prior": req.prior, "items": outcome.items,
                "settings": {**outcome.settings, "seed": req.seed, "limit": req.limit,
                             "batch_size": req.batch_size, "prior": req.prior},
                "paper": outcome.paper, "paper_row": PAPER_ROW.get(req.prior, req.prior),
                "rows": _rows(req.name, outcome, req.prior), "notes": ctx.notes,
                "versions": versions(), "device": str(ctx.device), "world_size": ctx.world,
                "rank": ctx.rank, **outcome.info, "nfe": nfe,
            },
            seconds=seconds,
            lines=outcome.lines,
        )
        _write_report(path, result)
        return result
    finally:
        _shutdown(ctx)


def _write_report(path: Any, result: Result) -> None:
    import json

    from dposer_cli.io.report import result_dict

    data = result_dict(result, __version__)
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def _shutdown(ctx: Context) -> None:
    """Remove scratch folders; tear down the process group this run created (torchrun) once every rank is done."""
    ctx.cleanup()
    if ctx.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
