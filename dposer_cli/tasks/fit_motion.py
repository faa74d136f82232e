"""The motion prior pass of video fits: per-frame fits of one person along a video → one smooth motion.

Tensors in, dataclasses out (no paths, no files). After `tasks.fit.fit` has fitted every frame, each
person's track gets one body shape (its first frame's) and `tasks.denoise_motion` runs on the fitted joints
(camera coordinates, `world=True`, joint temporal term) with the schedule of the jitter's noise level
(`motion_schedule`); the result replaces the per-frame parameters. `motion_metrics` reports the jitter (mean
joint acceleration) before and after.

    from dposer_cli.tasks.fit_motion import smooth_tracks
    motions = smooth_tracks(body, load_prior("body"), fitted, inputs, [rows_of_person0], part=Part.body)
    motions[0].params["body_pose"], motions[0].joints  # (T, 63), (T, 22, 3): frame order
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies.base import BodyModel, BodyOutput
from dposer_cli.core.parts import Part
from dposer_cli.tasks.denoise_motion import MotionPrior, MotionSchedule, denoise_motion, pick_schedule
from dposer_cli.tasks.fit import FIT_SPECS, FitInput, FitResult

Progress = Callable[[int, int], None]


@dataclass
class TrackMotion:
    """One person along one video: rows of the batch in frame order and the final parameters."""

    rows: np.ndarray  # (T,) batch rows in frame order
    params: dict[str, Tensor]  # (T, ...) after the motion prior pass (betas: one shape, every row)
    joints: Float[Tensor, "T J 3"]  # camera coordinates, metres
    joints_fit: Float[Tensor, "T J 3"]  # of the per-frame fits
    smoothed: bool  # the motion prior pass ran
    schedule: str = ""
    reprojection_px: float = float("nan")  # mean over the frames, after the pass


class ShapedBody:
    """`model` with one fixed shape, for `tasks.denoise_motion` (which poses the body without betas)."""

    def __init__(self, model: BodyModel, betas: Float[Tensor, "1 K"]) -> None:
        self.model, self.betas = model, betas
        self.kind, self.joint_names, self.faces = model.kind, model.joint_names, model.faces
        self.parents, self.num_betas = model.parents, model.num_betas

    def __call__(self, *, return_vertices: bool = True, **params: Tensor | None) -> BodyOutput:
        rows = next(v.shape[:-1] for v in params.values() if v is not None)
        return self.model(
            **params, betas=self.betas.expand(*rows, self.betas.shape[-1]), return_vertices=return_vertices
        )

    def joint_set(self, name: str) -> Tensor:
        return self.model.joint_set(name)

    def to(self, device: "str | torch.device") -> "ShapedBody":
        return self


def jitter_mm(joints: Float[Tensor, "T J 3"]) -> float:
    """Mean joint acceleration ‖J[t+1] − 2·J[t] + J[t−1]‖ over frames and joints, mm per frame²."""
    if len(joints) < 3:
        return float("nan")
    return float((joints[2:] - 2 * joints[1:-1] + joints[:-2]).norm(dim=-1).mean() * 1000)


def motion_schedule(joints: Float[Tensor, "T J 3"]) -> MotionSchedule:
    """The motion prior pass's recipe for per-frame fits: the denoising schedule of their noise level (white
    noise of std σ per coordinate has E‖J₊ − 2J + J₋‖ ≈ 3.9 σ), with one more outer iteration (temporal weight
    40, data 10): monocular fits jitter mostly in depth, far more than the benchmark noise. On the Gestures
    test clip (24 frames, PA-MPJPE 45 mm) the three official iterations take the jitter from 312 to 133
    mm/frame², four to 33 (truth 10) at the same PA-MPJPE (51 mm), five to 27 at 54 mm."""
    base = pick_schedule(jitter_mm(joints) / 1000 / 3.9)
    return MotionSchedule(base.name, base.iterations + 1, base.steps_per_iter)


def reprojection_px(
    model: BodyModel,
    params: Mapping[str, Tensor],
    fitted: FitResult,
    inputs: FitInput,
    rows: Tensor,
    part: Part,
) -> float:
    """Mean pixel distance of the model's projected joints to the keypoints the fit used (as the fit's own
    `reprojection_px`: confident keypoints, not the ones the part ignores)."""
    with torch.no_grad():
        joints = model(**params, return_vertices=False).joints[:, fitted.layout.model_idx]
    proj = cam.perspective_project(joints, inputs.focal[rows], inputs.center[rows])
    kp = inputs.keypoints[rows][:, fitted.layout.kp_keep.to(rows.device)]
    used = kp[..., 2] > 0
    used[:, list(FIT_SPECS[part].ignored)] = False
    return float(((proj - kp[..., :2]).norm(dim=-1) * used).sum() / used.sum().clamp(min=1))


def smooth_tracks(
    model: BodyModel,
    prior: MotionPrior | None,
    fitted: FitResult,
    inputs: FitInput,
    tracks: Sequence[np.ndarray],
    *,
    part: Part,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> list[TrackMotion]:
    """Per track (its batch rows in frame order): one body shape (the first frame's), then — with a body
    `prior` and at least 3 frames — the motion prior pass (`tasks.denoise_motion` on the fitted joints, with
    the schedule of the jitter's noise level). Tracks run in the given order, drawing from one `generator`."""
    device = fitted.joints.device
    motions = []
    for rows in tracks:
        index = torch.as_tensor(rows, device=device)
        params = {k: v[index] for k, v in fitted.params.items()}
        params["betas"] = params["betas"][:1].expand_as(params["betas"])  # one shape along the video
        motion = TrackMotion(rows, params, fitted.joints[index], fitted.joints[index], False)
        if prior is not None and len(rows) >= 3:
            res = denoise_motion(
                prior,
                ShapedBody(model, params["betas"][:1]),
                motion.joints_fit,
                world=True,
                schedule=motion_schedule(motion.joints_fit),
                temporal="joints",
                generator=generator,
                progress=progress,
            )
            motion.params = {**params, **{k: v.detach() for k, v in res.params.items()}}
            motion.joints, motion.smoothed, motion.schedule = res.joints.detach(), True, res.schedule.name
            motion.reprojection_px = reprojection_px(model, motion.params, fitted, inputs, index, part)
        motions.append(motion)
    return motions


def motion_metrics(motions: Sequence[TrackMotion]) -> dict[str, float]:
    """Jitter (mean joint acceleration, mm/frame²) of the per-frame fits (`jitter_before_mm`) and of the
    motions (`jitter_after_mm`), frame-weighted, and the motions' reprojection error when a pass ran; empty
    when no track has 3 frames."""
    weights = np.array([len(m.rows) for m in motions], dtype=np.float64)
    before = np.array([jitter_mm(m.joints_fit) for m in motions])
    after = np.array([jitter_mm(m.joints) for m in motions])
    ok = np.isfinite(before)
    if not ok.any():
        return {}
    out = {
        "jitter_before_mm": float(np.average(before[ok], weights=weights[ok])),
        "jitter_after_mm": float(np.average(after[ok], weights=weights[ok])),
    }
    smoothed = [m for m in motions if m.smoothed]
    if smoothed:
        out["motion_reprojection_error_px"] = float(
            np.average([m.reprojection_px for m in smoothed], weights=[len(m.rows) for m in smoothed])
        )
    return out


def merged_params(fitted: FitResult, motions: Sequence[TrackMotion]) -> dict[str, Tensor]:
    """The fit's per-row parameters with each motion's rows replaced by the motion's."""
    params = {k: v.clone() for k, v in fitted.params.items()}
    for m in motions:
        index = torch.as_tensor(m.rows, device=fitted.joints.device)
        for k, v in m.params.items():
            params[k][index] = v.to(params[k])
    return params


def motion_arrays(
    m: TrackMotion,
    *,
    fps: float,
    model_kind: str,
    inputs: FitInput,
    frame_index: np.ndarray,
    person_index: np.ndarray,
) -> dict[str, np.ndarray]:
    """motion.npz: AMASS-style keys (poses (T, 165) SMPL-X order, trans, betas, mocap_frame_rate, gender) and
    ours (the fitted parameters, joints before/after the motion pass, frame_index, camera)."""
    p = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in m.params.items()}
    t = len(m.rows)
    arrays: dict[str, np.ndarray] = {k: v for k, v in p.items() if k != "betas"}
    if "body_pose" in p:
        zeros = np.zeros((t, 3), np.float32)
        arrays["poses"] = np.concatenate(
            [
                p["global_orient"],
                p["body_pose"],
                p.get("jaw_pose", zeros),
                np.zeros((t, 6), np.float32),
                p.get("left_hand_pose", np.zeros((t, 45), np.float32)),
                p.get("right_hand_pose", np.zeros((t, 45), np.float32)),
            ],
            axis=1,
        )
        arrays["trans"] = p["transl"]
    index = torch.as_tensor(m.rows, device=inputs.focal.device)
    arrays.update(
        betas=p["betas"][0],
        mocap_frame_rate=np.array(fps),
        fps=np.array(fps),
        gender=np.array("neutral"),
        surface_model_type=np.array(model_kind),
        joints=m.joints.cpu().numpy(),
        joints_per_frame_fit=m.joints_fit.cpu().numpy(),
        frame_index=frame_index,
        person_index=person_index,
        focal=inputs.focal[index].cpu().numpy(),
        center=inputs.center[index].cpu().numpy(),
        image_size=inputs.image_size[index].cpu().numpy(),
        coordinates=np.array("camera: x right, y down, z forward, metres"),
        motion_prior=np.array(m.smoothed),
    )
    return arrays
