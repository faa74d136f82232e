"""`dposer denoise-motion`: recover a clean body-pose sequence from noisy 3D joints (spec §7.4, §7.5).

A file-in/file-out shell around `tasks.denoise_motion` (the algorithm, its schedules and metrics). Two inputs:

- **poses** (`pose_body`/`body_pose`, T×63): the evaluation protocol of spec §7.4. Observations are the
  body model's 22 joints (pelvis + 21 body joints; zero global orientation, translation and shape, as in the
  official script) plus `noise_std` metres of seeded Gaussian noise; the input itself is the ground truth.
- **joints** (`joints`, T×22×3, or all of the body model's joints): real observations, used as they are, in
  their own world frame; global orientation and translation are optimised too (initialised by a rigid fit
  of the torso). `noise_std` then only names the expected noise level (it picks the schedule). NaN joints
  count as occluded.

Outputs: `denoised.npz` (body_pose, joints, observed_joints [NaN = hidden], global_orient and transl [estimated
for joints input; a poses input's own, passed through, with the joints written in their frame], fps) and `comparison.mp4` (observations beside the result).
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch
from torch import Tensor

from dposer_cli.bodies import BodyModel, BodyOutput, load_body
from dposer_cli.bodies.kinematics import batch_rodrigues
from dposer_cli.core import validate
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError, MissingAssetError, UnavailableError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.export import write_bvh, write_meshes
from dposer_cli.io.media import save_video
from dposer_cli.io.motion import read_motion, write_motion
from dposer_cli.tasks import denoise_motion as task
from dposer_cli.tasks.export import SkeletonMotion, check_formats, export_data
from dposer_cli.tasks.pictures import comparison_frames

log = logging.getLogger(__name__)

FLOATS_PER_POINT = 64  # memory estimate (`_frame_bytes`): 4×4 skinning transform + posed copies + gradients


@dataclass(frozen=True)
class DenoiseRequest:
    input: Path
    out: Path = Path("dposer_out")
    noise_std: float | None = None  # metres; None → 0.04 (poses input) / schedule of 0.04 (joints input)
    occluded: tuple[str, ...] = ()  # body mask groups hidden from the observations (spec §7.5)
    visible: tuple[str, ...] = ()  # alternatively: only these groups (and the pelvis) are visible
    fps: float | None = None
    temporal: str = "auto"  # "vertices" (spec) | "joints" | "auto" (vertices when the body model has a mesh)
    seed: int = 0
    device: str = "auto"
    checkpoint: Path | None = None
    normalizer: Path | None = None
    render: bool = True
    renderer: str = "auto"
    body_model: Path | None = None
    export: tuple[str, ...] = ()  # also write denoised.glb / .obj / .ply (a mesh per frame) / .bvh


def run(
    req: DenoiseRequest,
    progress: Callable[[int, int], None] | None = None,
    *,
    prior: DPoserPrior | None = None,
) -> Result:
    """Run the command; `prior` overrides --checkpoint (Python API: any DPoserPrior of the right part)."""
    t0 = time.perf_counter()
    if req.noise_std is not None and not (math.isfinite(req.noise_std) and req.noise_std >= 0):
        raise InputError(f"--noise-std must be a non-negative number of metres (got {req.noise_std})")
    if req.occluded and req.visible:
        raise InputError("give either --occluded-part or --visible-part, not both")
    formats = check_formats(req.export)
    if req.temporal not in task.TEMPORAL_TERMS:
        raise InputError(f"unknown temporal term {req.temporal!r} ({', '.join(task.TEMPORAL_TERMS)})")
    motion = read_motion(Path(req.input), fps=req.fps)
    joints_in, pose_in = motion.joints, motion.body_pose
    if joints_in is not None:
        frames = len(joints_in)
    elif pose_in is not None:
        frames = len(pose_in)
    else:
        raise InputError(f"{req.input}: no body poses (pose_body/body_pose) and no joints to denoise")
    if frames < 2:
        raise InputError(
            f"{req.input}: the sequence has {frames} frame; denoising needs at least 2 "
            "(the temporal term compares neighbouring frames)"
        )
    device = resolve_device(req.device)
    gen = make_generator(req.seed, device)

    body = load_body("body", req.body_model, device)
    validate.frames(str(req.input), frames, bytes_per_frame=_frame_bytes(body, req.temporal))
    out_dir = ensure_out_dir(req.out)
    b22 = body.joint_set("body22")
    if prior is None:
        prior = DPoserPrior.load(Part.body, req.checkpoint, normalizer=req.normalizer, device=device)
    elif prior.part is not Part.body:
        raise InputError(f"the given prior is for --part {prior.part.value}, not {Part.body.value}")
    log.info("using body prior (%s) and body model %s", prior.source, body.kind)

    # ---- observations and ground truth ------------------------------------------------------------
    hidden = task.hidden_joints(req.occluded, req.visible, device)  # (22,) bool
    gt: Tensor | None = None
    world = joints_in is not None
    noise_std = task.DEFAULT_NOISE_STD if req.noise_std is None else float(req.noise_std)
    if joints_in is not None:  # world coordinates
        obs = _select_body22(_tensor(joints_in, device), body, b22, str(req.input))
        if pose_in is not None:
            gt = _joints(
                body,
                b22,
                _tensor(pose_in, device),
                _tensor(motion.global_orient, device),
                _tensor(motion.transl, device),
            )
        added = 0.0
    elif pose_in is not None:  # (one of joints and poses is given: checked above)
        gt = _joints(body, b22, _tensor(pose_in, device), None, None)  # body frame (spec §7.4)
        obs = gt + noise_std * torch.randn(gt.shape, generator=gen, device=device, dtype=gt.dtype)
        added = noise_std
    if bool((torch.isnan(obs).any(-1) | hidden).all()):
        raise InputError(f"{req.input}: every joint is occluded; nothing to fit")

    # ---- optimisation -------------------------------------------------------------------------------
    t_opt = time.perf_counter()
    fit = task.denoise_motion(
        prior,
        body,
        obs,
        ~hidden,
        noise_std=noise_std,
        occluded=req.occluded,
        world=world,
        temporal=req.temporal,
        generator=gen,
        progress=progress,
    )
    opt_seconds = time.perf_counter() - t_opt
    schedule = fit.schedule

    # ---- outputs ----------------------------------------------------------------------------------------
    observed = torch.where(fit.visible[..., None], obs, torch.nan)
    arrays: dict[str, np.ndarray] = {
        key: fit.params[key].cpu().numpy()
        for key in ("body_pose", "global_orient", "transl")
        if key in fit.params
    }
    joints_out = fit.joints
    if not world and (motion.global_orient is not None or motion.transl is not None):
        # The input's root motion is passed through unchanged, and the joints are written in its frame, so that
        # the file's joints are its parameters' joints (read back, it is a consistent joints + poses input).
        root = {"global_orient": motion.global_orient, "transl": motion.transl}
        arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in root.items() if v is not None})
        joints_out, observed = _root_motion(
            fit.joints, observed, _tensor(motion.global_orient, device), _tensor(motion.transl, device)
        )
    arrays.update(joints=joints_out.cpu().numpy(), observed_joints=observed.cpu().numpy())
    fps = float(req.fps or motion.fps or 30.0)
    outputs: dict[str, Path | list[Path]] = {
        "denoised": write_motion(out_dir / "denoised.npz", fps=fps, **arrays)
    }
    result_params: dict[str, Tensor] = {
        k: _tensor(arrays[k], device) for k in ("body_pose", "global_orient", "transl") if k in arrays
    }  # (export_data leaves absent parameters out)
    for fmt, data in export_data(body, result_params, formats, fps=fps, name="denoised").items():  # --export
        outputs[f"export_{fmt}"] = (
            write_bvh(out_dir / "denoised.bvh", *data.bvh_args())
            if isinstance(data, SkeletonMotion)
            else write_meshes(out_dir / "denoised", data.vertices, data.faces, fmt)
        )

    metrics: dict[str, float] = {}
    if gt is not None:
        metrics.update(task.motion_metrics(obs, fit.joints, gt, fit.visible, fit.partial))
    metrics["frames_per_second"] = frames / max(opt_seconds, 1e-9)
    if req.render:
        with torch.no_grad():
            result = body(**fit.params, return_vertices=True)
            # pose input: the input itself is the ground truth (noise and occlusion were applied here)
            clean = None if world else body(body_pose=_tensor(pose_in, device)).vertices
        video = _render(
            out_dir / "comparison.mp4",
            obs,
            fit.visible,
            result,
            body,
            fps,
            req.renderer,
            gt=gt,
            clean=clean,
            hidden_parts=req.occluded or (),
        )
        if video is not None:
            outputs["comparison"] = video

    lines = [
        (
            f"denoised {frames} frames with {schedule.steps} steps ({fit.nfe} network evaluations, schedule "
            f"{schedule.name}) from {prior.source}"
        )
    ]
    if "mpjpe_mm" in metrics:
        lines.append(
            f"MPJPE {metrics['mpjpe_input_mm']:.1f} mm (observations) → {metrics['mpjpe_mm']:.1f} mm"
        )
    return Result(
        command="denoise-motion",
        outputs=outputs,
        metrics=metrics,
        info={
            "frames": frames,
            "fps": fps,
            "input_kind": "joints" if world else "poses",
            "noise_std_m": noise_std,
            "noise_added_m": added,
            "schedule": schedule.name,
            "steps": schedule.steps,
            "t_range": list(schedule.t_range),
            "nfe": fit.nfe,
            "occluded_joints": [n for n, h in zip(task.BODY22, hidden.tolist(), strict=True) if h] or None,
            "temporal_term": fit.temporal_term,
            "body_model": body.kind,
            "checkpoint": prior.source,
            "seed": req.seed,
            "device": str(device),
        },
        seconds=time.perf_counter() - t0,
        lines=lines,
    )


# ---- helpers ---------------------------------------------------------------------------------------------
def _frame_bytes(body: BodyModel, temporal: str) -> int:
    """Estimated memory per frame of the optimisation: per posed point (vertices with the vertex temporal
    term, else joints) the skinning transform, the posed copies and their gradients, float32."""
    mesh = body.faces is not None and temporal != "joints"
    points = int(body.faces.max()) + 1 if mesh and body.faces is not None else len(body.joint_names)
    return FLOATS_PER_POINT * validate.FLOAT_BYTES * points


@overload
def _tensor(value: np.ndarray, device: torch.device) -> Tensor: ...
@overload
def _tensor(value: None, device: torch.device) -> None: ...
@overload
def _tensor(value: np.ndarray | None, device: torch.device) -> Tensor | None: ...
def _tensor(value: np.ndarray | None, device: torch.device) -> Tensor | None:
    return None if value is None else torch.as_tensor(np.asarray(value), dtype=torch.float32, device=device)


def _joints(
    body: BodyModel, b22: Tensor, pose: Tensor, orient: Tensor | None, transl: Tensor | None
) -> Tensor:
    with torch.no_grad():
        return body(body_pose=pose, global_orient=orient, transl=transl, return_vertices=False).joints[:, b22]


def _root_motion(
    joints: Tensor, observed: Tensor, orient: Tensor | None, transl: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Body-frame joints (T, J, 3) moved by a global orientation about the pelvis, then a translation (the
    body models' root motion: the pelvis, joint 0, is the rotation's centre)."""
    pivot = joints[:, :1]
    if orient is not None:
        rot = batch_rodrigues(orient).transpose(-1, -2)[:, None]  # (T, 1, 3, 3): row vectors times R^T
        joints = pivot + ((joints - pivot)[..., None, :] @ rot)[..., 0, :]
        observed = pivot + ((observed - pivot)[..., None, :] @ rot)[..., 0, :]
    if transl is not None:
        joints, observed = joints + transl[:, None], observed + transl[:, None]
    return joints, observed


def _select_body22(joints: Tensor, body: BodyModel, b22: Tensor, where: str) -> Tensor:
    if joints.ndim != 3 or joints.shape[-1] != 3:
        raise InputError(f"{where}: joints have shape {tuple(joints.shape)}; expected (T, 22, 3) in metres")
    if joints.shape[1] == 22:
        return joints
    if joints.shape[1] == len(body.joint_names):
        return joints[:, b22]
    raise InputError(
        f"{where}: joints have {joints.shape[1]} joints per frame; expected 22 (pelvis + 21 body "
        f"joints, SMPL-X order) or the body model's {len(body.joint_names)}"
    )


def _render(
    path: Path,
    obs: Tensor,
    visible: Tensor,
    result: BodyOutput,
    body: BodyModel,
    fps: float,
    renderer: str,
    *,
    gt: Tensor | None,
    clean: Tensor | None,
    hidden_parts: tuple[str, ...],
) -> Path | None:
    """comparison.mp4 (`tasks.pictures.comparison_frames`); None (with a warning) without a renderer."""
    try:
        frames = comparison_frames(
            obs, visible, result, body, renderer=renderer, gt=gt, clean=clean, hidden_parts=hidden_parts
        )
        return save_video(path, frames, fps)
    except (UnavailableError, MissingAssetError) as exc:
        log.warning("no comparison video: %s", exc.message)
        return None
