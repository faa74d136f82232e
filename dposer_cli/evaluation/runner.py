"""The table of evaluations and `run`: validate a request, run its evaluation, and lay the numbers out next to
the paper's.

Each evaluation (see `EVALUATIONS`) reads its dataset in the published on-disk layout (`--data-dir`), calls the
tasks with the prior under test (`--prior dposer`, or the baselines `none`, `l2`, `gmm`, `vposer` through the
same interface), and reports metrics with the names and units of the paper's tables. Under `torchrun` the
dataset is sharded over the processes; every rank gets the gathered per-sample results.

A row is compared with the paper only when it was computed on the paper's body model (SMPL-X, MANO, FLAME):
on another model (the default mannequin) the row names its model and the paper column stays empty.
"""

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import torch

from dposer_cli import __version__
from dposer_cli.core.errors import InputError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.evaluation import completion, denoise, generation, hmr, ik, speed
from dposer_cli.evaluation.common import (
    NON_BODY_PRIORS,
    PAPER_ROW,
    PRIORS,
    BenchmarkRequest,
    Context,
    FitFiles,
    Outcome,
    Progress,
)
from dposer_cli.evaluation.paper import paper_body_model, paper_value


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
        generation.run,
        "sample -n poses; FID vs --statistics/--reference, precision/recall/density/coverage, APD, dNN",
        parts=(Part.body, Part.hand, Part.face, Part.face_shape, Part.wholebody),
        priors=("dposer", "gmm", "vposer"),
    ),
    "speed": Evaluation(
        speed.run,
        "samples/s, fits/s (task alone and with file I/O), network evaluations and peak memory of generation and "
        "each task on this device",
        parts=(Part.body,),
        settings=speed.TASKS,
        priors=("dposer",),
    ),
    "completion": Evaluation(
        completion.run_body,
        "body pose completion: masked parts, min/mean/std over hypotheses of MPJPE/MPVPE (mm), APD (cm)",
        parts=(Part.body,),
        data="AMASS-style folder of body-pose .npz files (the AMASS test split)",
        settings=completion.BODY_CHOICES,
        priors=("dposer", "gmm", "l2", "vposer"),
    ),
    "denoise": Evaluation(
        denoise.run,
        "motion denoising on 60-frame HumanEva clips at 20/40/100 mm, or with legs/left_arm/right_body hidden",
        parts=(Part.body,),
        data="AMASS-style folder of HumanEva motion .npz files (cut into 60-frame clips)",
        settings=denoise.SETTINGS,
    ),
    "hand-ik": Evaluation(
        ik.run_hand,
        "hand inverse kinematics from sparse / fingertip / noisy 3D joints: MPJPE visible/occluded/all, MPVPE (mm)",
        parts=(Part.hand,),
        data="folder of hand-pose .npz files (hand_pose (N, 45); e.g. the ReInterHand test split)",
        settings=ik.HAND_SETTINGS,
        priors=NON_BODY_PRIORS,
    ),
    "face-ik": Evaluation(
        ik.run_face,
        "face inverse kinematics from noisy / half-occluded FLAME landmarks: MPVPE, MPJPE (mm); needs FLAME",
        parts=(Part.face,),
        data="folder of face .npz files (jaw_pose, expression[, betas]; e.g. the WCPA valid split)",
        settings=ik.FACE_SETTINGS,
        priors=NON_BODY_PRIORS,
    ),
    "ehf": Evaluation(
        hmr.run_ehf,
        "body mesh recovery on EHF from ViTPose keypoints: PA-MPJPE and MPJPE of 22 body joints (mm); needs SMPL-X",
        parts=(Part.body,),
        data="EHF folder: NN_img.jpg, NN_align.ply, vitpose_keypoints/predictions/NN_img.json",
    ),
    "freihand": Evaluation(
        hmr.run_freihand,
        "hand mesh recovery on FreiHAND (GT 2D keypoints): PA-MPJPE, PA-MPVPE (mm), F@5mm, F@15mm; needs MANO",
        parts=(Part.hand,),
        data="FreiHAND_pub_v2_eval folder: evaluation/rgb/*.jpg, evaluation_{K,xyz,verts}.json",
        priors=NON_BODY_PRIORS,
    ),
    "arctic": Evaluation(
        hmr.run_arctic,
        "whole-body mesh recovery on ARCTIC (s05, camera 4): PA-MPVPE all/hands/face, PA-MPJPE body/hands (mm); "
        "needs SMPL-X",
        parts=(Part.wholebody,),
        data="ARCTIC folder: images/s05/<action>/4/*.jpg, keypoints/mmpose_keypoints/s05/<action>/4/*.json, "
        "processed_verts/seqs/s05/<action>.npy, meta/misc.json",
        settings=hmr.ARCTIC_SETTINGS,
        priors=NON_BODY_PRIORS,
    ),
    "wholebody-completion": Evaluation(
        completion.run_wholebody,
        "whole-body completion with one random hand (or the face) masked: MPJPE/MPVPE min/mean/std (mm), APD (cm)",
        parts=(Part.wholebody,),
        data="folder of whole-body .npz files (body_pose, left/right_hand_pose, jaw_pose, expression)",
        settings=completion.WHOLEBODY_CHOICES,
        priors=("dposer", "gmm", "l2"),
    ),
}


@dataclass
class Report:
    """One evaluation's results. `info` is the report's body (settings, paper tables, rows, notes, versions);
    `arrays` holds data worth saving beside the report (generation: `samples`, raw poses of `part`)."""

    name: str
    part: Part
    rank: int
    metrics: dict[str, dict[str, float]]
    info: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def names_hint() -> str:
    return "evaluations: " + ", ".join(EVALUATIONS)


def lookup(name: str) -> Evaluation:
    """The evaluation called `name`; unknown names raise InputError with a suggestion and the list."""
    if name not in EVALUATIONS:
        raise InputError(f"unknown benchmark {name!r}{suggest(name, list(EVALUATIONS))}", hint=names_hint())
    return EVALUATIONS[name]


def validate(req: BenchmarkRequest) -> tuple[Evaluation, Part]:
    """The evaluation and part of a request.

    Raises:
        InputError: an unknown name, part, prior or setting, a missing --data-dir, a count below 1.
    """
    ev = lookup(req.name)
    part = Part(req.part) if req.part is not None else ev.parts[0]
    if part not in ev.parts:
        raise InputError(
            f"benchmark {req.name} takes --part {', '.join(p.value for p in ev.parts)}, not {part.value}"
        )
    if req.prior not in ev.priors:
        raise InputError(
            f"benchmark {req.name} compares --prior {', '.join(ev.priors)}, not {req.prior!r}"
            f"{suggest(req.prior, list(ev.priors))}"
        )
    if ev.data and req.data_dir is None:
        raise InputError(f"benchmark {req.name} needs --data-dir ({ev.data})")
    for s in req.settings:
        if s not in ev.settings:
            valid = list(ev.settings)
            raise InputError(
                f"unknown --setting {s!r} for benchmark {req.name}{suggest(s, valid)}",
                hint="settings: " + (", ".join(valid) if valid else "none"),
            )
    for flag, value in (
        ("--limit", req.limit),
        ("-n", req.n),
        ("--hypo", req.hypo),
        ("--batch-size", req.batch_size),
        ("--stride", req.stride),
        ("--gmm-components", req.gmm_components),
    ):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1 (got {value})")
    return ev, part


def versions() -> dict[str, str]:
    out = {
        "dposer": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        out["smplx"] = metadata.version("smplx")  # the optional extra, when installed
    except metadata.PackageNotFoundError:
        pass
    return out


def rows(outcome: Outcome, prior: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Table rows (setting, metric, our value, the paper's value for the comparable method, the body model the
    value depends on) and notes on what could not be compared.

    The paper column is left empty (`paper` None, `paper_note` says why) where the value depends on a body
    model other than the paper's."""
    row = PAPER_ROW.get(prior, prior)
    theirs = paper_body_model(outcome.body_role)
    out, withheld = [], 0
    for setting, metrics in outcome.metrics.items():
        entry = outcome.paper.get(setting)
        for metric, value in metrics.items():
            if not isinstance(value, int | float):
                continue
            body = None if metric in outcome.body_independent else outcome.body_model
            published = paper_value(entry, row, metric)
            r: dict[str, Any] = {
                "setting": setting,
                "metric": metric,
                "value": float(value),
                "paper": published,
                "paper_row": row,
                "table": entry["table"] if entry else None,
                "body_model": body,
            }
            if published is not None and body is not None and theirs is not None and body != theirs:
                r["paper"] = None
                r["paper_note"] = f"not comparable: computed on the {body} body model, the paper on {theirs}"
                withheld += 1
            out.append(r)
    notes = []
    if withheld:
        notes.append(
            f"paper column left empty in {withheld} row(s): computed on the {outcome.body_model} body "
            f"model, the paper's numbers on {theirs} (pass --body-model to compare)"
        )
    return out, notes


def run(
    req: BenchmarkRequest, progress: Progress | None = None, *, fit_files: FitFiles | None = None
) -> Report:
    """Run one evaluation on tensors (no files written).

    `progress(done, total)` is called after every batch (every task for `speed`); `fit_files` runs the
    fit-image service on files, for the speed evaluation's I/O-inclusive fit-image figure.

    Raises:
        InputError / MissingAssetError / ...: bad requests, datasets or models (one-line messages).
    """
    t0 = time.perf_counter()
    ev, part = validate(req)
    ctx = Context(req, part=part, progress=progress, fit_files=fit_files)
    try:
        outcome = ev.run(ctx)
        nfe = sum(ctx.gather([int(outcome.info.get("nfe", 0))]))  # network evaluations of all ranks
    finally:
        ctx.close()
    if ctx.rank != 0:
        return Report(
            req.name,
            part,
            ctx.rank,
            {},
            {"benchmark": req.name, "rank": ctx.rank},
            seconds=time.perf_counter() - t0,
        )
    table, notes = rows(outcome, req.prior)
    notes = ctx.notes + notes
    info = {
        "benchmark": req.name,
        "part": part.value,
        "prior": req.prior,
        "items": outcome.items,
        "settings": {
            **outcome.settings,
            "seed": req.seed,
            "limit": req.limit,
            "batch_size": req.batch_size,
            "prior": req.prior,
        },
        "paper": outcome.paper,
        "paper_row": PAPER_ROW.get(req.prior, req.prior),
        "body_model": outcome.body_model,
        "rows": table,
        "notes": notes,
        "versions": versions(),
        "device": str(ctx.device),
        "world_size": ctx.world,
        "rank": ctx.rank,
        **outcome.info,
        "nfe": nfe,
    }
    return Report(
        req.name,
        part,
        ctx.rank,
        outcome.metrics,
        info,
        outcome.lines + notes[len(ctx.notes) :],
        outcome.arrays,
        time.perf_counter() - t0,
    )
