"""`dposer ik`: hand and face inverse kinematics from 3D keypoints with the DPoser prior (spec §7.9, §7.10).

The file-in/file-out shell around `dposer_cli.tasks.ik`: read the targets file (`io.ik_targets`), load the
body model and the prior(s) (`engine.priors`: dposer, none, l2), solve all targets in one batch, write
`ik.npz` (the part's pose keys through the pose-file writer, the other parameters, `joints`,
`target_joints`, `visible`) and report the errors (with ground truth) in the result.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.optimize import PosePrior
from dposer_cli.engine.priors import build_prior, check_prior
from dposer_cli.io.export import write_meshes
from dposer_cli.io.ik_targets import IKTargets, read_ik_targets
from dposer_cli.io.media import save_image
from dposer_cli.io.poses import write_poses
from dposer_cli.tasks.export import BodyMeshes, check_formats, export_data
from dposer_cli.tasks.ik import (
    PRIOR_SCALES,
    PRIORS,
    IKProblem,
    Progress,
    apply_type,
    check_type,
    evaluate_ik,
    ik_prior,
    part_ik,
    problem_from_params,
    solve_ik,
)
from dposer_cli.tasks.pictures import ik_sheet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IKRequest:
    part: Part
    targets: Path
    out: Path = Path("dposer_out")
    ik_type: str = "full"
    noise_std: float | None = None
    steps: int | None = None
    prior: str = "dposer"
    solve_orient: bool = False
    body_model: Path | None = None
    checkpoint: Path | None = None
    shape_checkpoint: Path | None = None
    normalizer: Path | None = None
    device: str = "auto"
    seed: int = 0
    render: bool = False  # also draw ik.png: targets against the recovered joints for the first solves
    renderer: str = "auto"
    export: tuple[str, ...] = ()  # also write ik.glb / .obj / .ply (a mesh per target set)


MAX_TARGET_M = 100.0  # a target coordinate beyond this many metres is refused (millimetres, most likely)


def read_targets(path: Path, part: Part) -> IKTargets:
    """Read and check a targets file (`io.ik_targets`) for `part`'s IK, without a body model.

    Raises:
        InputError: missing/unreadable file, wrong shapes, NaNs at visible joints, no usable keys, or target
            joints more than `MAX_TARGET_M` metres from the origin.
    """
    spec = part_ik(part)
    data = read_ik_targets(
        path,
        part=part.value,
        joint_set=spec.joint_set,
        num_joints=spec.num_joints,
        known=dict(spec.known),
        params=dict(spec.gt_keys),
        pose_keys=spec.priors[0][1],
    )
    far = float(np.abs(data.joints).max()) if data.joints is not None and data.joints.size else 0.0
    if far > MAX_TARGET_M:
        raise InputError(
            f"targets file {path}: a target joint lies {far:.4g} m from the origin; targets are in "
            f"metres (at most {MAX_TARGET_M:g} m)",
            hint="convert millimetres to metres (÷ 1000)",
        )
    return data


def load_problem(path: Path, part: Part, body: BodyModel, device: torch.device) -> IKProblem:
    """Read a targets file: `joints` (N,J,3) [+ `visible` (N,J)] or ground-truth parameters (evaluation).

    Raises:
        InputError: see `read_targets`.
    """
    return _problem(read_targets(path, part), part, body, device)


def _problem(data: IKTargets, part: Part, body: BodyModel, device: torch.device) -> IKProblem:
    if data.joints is not None and data.visible is not None:
        known = {k: torch.as_tensor(v, device=device) for k, v in data.known.items()}
        return IKProblem(
            part,
            torch.as_tensor(data.joints, device=device),
            torch.as_tensor(data.visible, device=device),
            known,
        )
    # evaluation mode: ground-truth parameters → targets through the body model
    params = {k: torch.as_tensor(v, device=device) for k, v in data.params.items()}
    return problem_from_params(part, body, params)


def load_priors(
    part: Part,
    checkpoint: Path | None = None,
    *,
    kind: str = "dposer",
    shape_checkpoint: Path | None = None,
    normalizer: Path | None = None,
    device: torch.device | str = "cpu",
) -> dict[Part, PosePrior]:
    """The prior(s) of `kind` a part's IK needs (face: the pose/expression prior and the shape prior).

    `checkpoint`/`normalizer` name the first (pose) prior's weights, `shape_checkpoint` the face shape
    prior's.
    """
    check_prior(kind, part, allowed=PRIORS)
    out: dict[Part, PosePrior] = {}
    for i, p in enumerate(part_ik(part).prior_parts):
        out[p] = build_prior(
            kind,
            p,
            checkpoint=checkpoint if i == 0 else shape_checkpoint,
            normalizer=normalizer if i == 0 else None,
            device=device,
        )
    return out


def _validate(req: IKRequest) -> None:
    part_ik(req.part)  # hand or face
    check_prior(req.prior, req.part, allowed=PRIORS)
    check_type(req.part, req.ik_type)
    check_formats(req.export, part=req.part, what=f"{req.part.value} IK results")
    if req.steps is not None and req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    if req.noise_std is not None:
        if req.ik_type != "noisy":
            raise InputError(f"--noise-std applies to --type noisy only (got --type {req.ik_type})")
        if not (req.noise_std >= 0 and np.isfinite(req.noise_std)):
            raise InputError(f"--noise-std must be a finite number ≥ 0 m (got {req.noise_std})")


def run(req: IKRequest, progress: Progress | None = None) -> Result:
    """Solve all targets of `req.targets` in one batch and write `req.out/ik.npz`."""
    t0 = time.perf_counter()
    _validate(req)
    spec = part_ik(req.part)
    targets = read_targets(req.targets, req.part)  # before the body model and the priors: bad files fail fast
    device = resolve_device(req.device)
    body = load_body(spec.body, req.body_model, device)  # a face without FLAME raises MissingAssetError here
    problem = _problem(targets, req.part, body, device)
    out_dir = ensure_out_dir(req.out)
    gen = make_generator(req.seed, device)
    problem = apply_type(problem, req.ik_type, noise_std=req.noise_std, generator=gen)
    prior, sources = None, []
    if req.prior != "none":
        priors = load_priors(
            req.part,
            req.checkpoint,
            kind=req.prior,
            shape_checkpoint=req.shape_checkpoint,
            normalizer=req.normalizer,
            device=device,
        )
        prior = ik_prior(req.part, priors, scale=PRIOR_SCALES.get(req.prior, 1.0))
        if req.prior == "dposer":
            sources = [str(getattr(p, "source", "")) for p in priors.values()]
            for p, source in zip(priors, sources, strict=True):
                log.info("using %s prior (%s)", p.value, source)
    t_solve = time.perf_counter()
    result = solve_ik(
        problem,
        body,
        prior,
        ik_type=req.ik_type,
        noise_std=req.noise_std,
        steps=req.steps,
        solve_orient=req.solve_orient,
        generator=gen,
        progress=progress,
    )
    solve_seconds = time.perf_counter() - t_solve
    if not all(torch.isfinite(v).all() for v in (*result.params.values(), result.joints)):
        raise InputError("the IK solve produced non-finite values; check the targets' units (metres)")
    metrics = evaluate_ik(problem, body, result)
    metrics["solves_per_second"] = problem.n / max(solve_seconds, 1e-9)

    # pose keys of the part (hand_pose | jaw_pose + expression) via the pose-file writer; the rest as extras
    pose_keys = spec.priors[0][1]
    poses = torch.cat([result.params[k] for k in pose_keys], -1).cpu().numpy()
    extras = {k: v.cpu().numpy() for k, v in result.params.items() if k not in pose_keys}
    extras["joints"] = result.joints.cpu().numpy()
    extras["target_joints"] = problem.targets.cpu().numpy()
    extras["visible"] = problem.visible.cpu().numpy()
    path = write_poses(out_dir / "ik.npz", req.part, poses, extras=extras)
    outputs: dict[str, Path | list[Path]] = {"ik": path}
    for fmt, data in export_data(
        body, result.params, check_formats(req.export), name="ik"
    ).items():  # --export
        if isinstance(data, BodyMeshes):
            outputs[f"export_{fmt}"] = write_meshes(out_dir / "ik", data.vertices, data.faces, fmt)
    if req.render:
        known = problem.gt["joints"] if problem.gt is not None and "joints" in problem.gt else None
        hidden_at = known if known is not None else torch.full_like(problem.targets, torch.nan)
        shown = torch.where(problem.visible[..., None], problem.targets, hidden_at)
        picture = ik_sheet(
            spec.joint_set,
            result.joints,
            shown,
            problem.visible,
            renderer=req.renderer,
            side=getattr(body, "side", "right"),
            title=f"ik --part {req.part.value} --type {req.ik_type}: the first {min(problem.n, 8)} "
            f"of {problem.n}",
        )
        outputs["picture"] = save_image(out_dir / "ik.png", picture)
    noise_std = spec.noise(req.ik_type, req.noise_std) if req.ik_type == "noisy" else None
    summary = (
        f"solved {problem.n} {req.part.value} IK target set(s) (--type {req.ik_type}, prior {req.prior}, "
        f"{result.steps} steps, {result.nfe} network evaluations) with the {body.kind} model"
    )
    return Result(
        command="ik",
        outputs=outputs,
        metrics=metrics,
        info={
            "part": req.part.value,
            "type": req.ik_type,
            "n": problem.n,
            "prior": req.prior,
            "checkpoint": sources,
            "body_model": body.kind,
            "joint_order": spec.joint_set,
            "steps": result.steps,
            "nfe": result.nfe,
            "noise_std": noise_std,
            "solve_orient": req.solve_orient,
            "evaluation": problem.gt is not None,
            "seed": req.seed,
            "device": str(device),
        },
        seconds=time.perf_counter() - t0,
        lines=[summary],
    )
