"""`dposer denoise-motion`: recover a clean body-pose sequence from noisy 3D joints (spec §7.4, §7.5).

Two inputs:

- **poses** (`pose_body`/`body_pose`, T×63): the evaluation protocol of spec §7.4. Observations are the
  body model's 22 joints (pelvis + 21 body joints; zero global orientation, translation and shape, as in the
  official script) plus `noise_std` metres of seeded Gaussian noise; the input itself is the ground truth.
- **joints** (`joints`, T×22×3, or all of the body model's joints): real observations, used as they are, in
  their own world frame; global orientation and translation are optimised too (initialised by a Kabsch fit
  of the torso). `noise_std` then only names the expected noise level (it picks the schedule). NaN joints
  count as occluded.

The variable is the body pose of every frame, optimised in one batch with Adam (lr 0.03) on
data (mean Euclidean joint error) + temporal smoothness (mean ‖v_f − v_{f+1}‖ over vertices, or joints) +
the DPoser prior (sum over dims / T). Official schedules by noise std (iterations × steps, t_max → t_min):
0.02 → 3×40, 0.2→0.05; 0.04 → 3×60, 0.25→0.05; 0.1 → 3×80, 0.25→0.1. Other levels use the nearest of
the three on a log scale (boundaries at 28 mm and 63 mm; 0 → the 0.02 schedule).

Initialisation: the official script starts from the SMPL mean pose (a data file we do not ship); we start
from the prior's own mean pose (`denormalize(0)`, the training-data mean) + N(0, 0.01²) — the same role.

Partial visibility (§7.5, `occluded` / `visible` joints): hidden joints get no data term, init N(0, 0.01²),
weighting snr, Adam eps 1e-6, weights temp 20 (from outer iteration 2 on), data 100, prior (1+it)·sds, with
the official per-part schedules (legs 0.2→0.01 sds 0.4; left_arm 0.3→0.01 sds 0.2; right_body 0.3→0.01
sds 0.3; anything else 0.3→0.01 sds 0.3), all 3×80, then Gaussian post-smoothing (window 5, σ 3, the first
two and last two frames kept).
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError, MissingAssetError, UnavailableError
from dposer_cli.core.parts import PARTS, Part, mask_dims
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.core.rotations import matrix_to_axis_angle
from dposer_cli.engine.loss import time_schedule
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.io.motion import read_motion, write_motion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """One optimisation recipe (spec §7.4 / §7.5)."""

    name: str
    iterations: int
    steps_per_iter: int
    t_range: tuple[float, float]  # (t_min, t_max)
    partial: bool = False
    sds: float = 1.0  # prior weight factor

    @property
    def steps(self) -> int:
        return self.iterations * self.steps_per_iter


# official noise levels (metres) → schedule (spec §7.4)
SCHEDULES: dict[float, Schedule] = {
    0.02: Schedule("motion-0.02", 3, 40, (0.05, 0.20)),
    0.04: Schedule("motion-0.04", 3, 60, (0.05, 0.25)),
    0.1: Schedule("motion-0.1", 3, 80, (0.10, 0.25)),
}
# occluded part → schedule (spec §7.5)
PARTIAL_SCHEDULES: dict[str, Schedule] = {
    "legs": Schedule("motion-partial-legs", 3, 80, (0.01, 0.20), partial=True, sds=0.4),
    "left_arm": Schedule("motion-partial-left_arm", 3, 80, (0.01, 0.30), partial=True, sds=0.2),
    "right_body": Schedule("motion-partial-right_body", 3, 80, (0.01, 0.30), partial=True, sds=0.3),
}
PARTIAL_DEFAULT = Schedule("motion-partial", 3, 80, (0.01, 0.30), partial=True, sds=0.3)
DEFAULT_NOISE_STD = 0.04  # metres: the paper's headline setting
TORSO = ("pelvis", "left_hip", "right_hip", "spine1", "spine2", "spine3", "neck")  # rigid-ish, for the Kabsch init


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


def pick_schedule(noise_std: float) -> Schedule:
    """Nearest official schedule on a log scale (0 → the 0.02 schedule)."""
    if noise_std <= 0:
        return SCHEDULES[0.02]
    return min(SCHEDULES.items(), key=lambda kv: abs(math.log(noise_std / kv[0])))[1]


def run(req: DenoiseRequest, progress: Callable[[int, int], None] | None = None, *,
        prior: DPoserPrior | None = None) -> Result:
    """Run the command; `prior` overrides --checkpoint (Python API: any DPoserPrior of the right part)."""
    t0 = time.perf_counter()
    if req.noise_std is not None and not (math.isfinite(req.noise_std) and req.noise_std >= 0):
        raise InputError(f"--noise-std must be a non-negative number of metres (got {req.noise_std})")
    if req.occluded and req.visible:
        raise InputError("give either --occluded-part or --visible-part, not both")
    if req.temporal not in ("auto", "vertices", "joints"):
        raise InputError(f"unknown temporal term {req.temporal!r} (auto, vertices, joints)")
    motion = read_motion(Path(req.input), fps=req.fps)
    joints_in = getattr(motion, "joints", None)
    pose_in = getattr(motion, "body_pose", None)
    if joints_in is None and pose_in is None:
        raise InputError(f"{req.input}: no body poses (pose_body/body_pose) and no joints to denoise")
    frames = len(joints_in) if joints_in is not None else len(pose_in)
    if frames < 2:
        raise InputError(f"{req.input}: the sequence has {frames} frame; denoising needs at least 2 "
                         "(the temporal term compares neighbouring frames)")
    out_dir = ensure_out_dir(req.out)
    device = resolve_device(req.device)
    gen = make_generator(req.seed, device)

    from dposer_cli.bodies.base import load_body

    body = load_body("body", req.body_model, device)
    b22 = body.joint_set("body22")
    if prior is None:
        prior = DPoserPrior.load(Part.body, req.checkpoint, normalizer=req.normalizer, device=device)
    elif prior.part is not Part.body:
        raise InputError(f"the given prior is for --part {prior.part.value}, not {Part.body.value}")
    log.info("using body prior (%s) and body model %s", prior.source, body.kind)

    # ---- observations and ground truth ------------------------------------------------------------
    hidden = _hidden_joints(req.occluded, req.visible, device)  # (22,) bool
    gt: Tensor | None = None
    world = joints_in is not None
    noise_std = DEFAULT_NOISE_STD if req.noise_std is None else float(req.noise_std)
    if world:
        obs = _select_body22(torch.as_tensor(np.asarray(joints_in), dtype=torch.float32, device=device), body, b22,
                             str(req.input))
        hidden_tf = hidden.expand(frames, 22) | torch.isnan(obs).any(-1)
        if pose_in is not None:
            gt = _joints(body, b22, torch.as_tensor(np.asarray(pose_in), dtype=torch.float32, device=device),
                         _opt(motion, "global_orient", device), _opt(motion, "transl", device))
        added = 0.0
    else:
        pose_gt = torch.as_tensor(np.asarray(pose_in), dtype=torch.float32, device=device)
        gt = _joints(body, b22, pose_gt, None, None)  # body frame (spec §7.4)
        noise = torch.randn(gt.shape, generator=gen, device=device, dtype=gt.dtype)
        obs = gt + noise_std * noise
        hidden_tf = hidden.expand(frames, 22).clone()
        added = noise_std
    if bool(hidden_tf.all()):
        raise InputError(f"{req.input}: every joint is occluded; nothing to fit")
    visible_tf = ~hidden_tf
    obs = torch.where(visible_tf[..., None], obs, torch.zeros((), device=device))

    partial = bool(hidden_tf.any())
    if partial:
        name = req.occluded[0] if len(req.occluded) == 1 else ""
        schedule = PARTIAL_SCHEDULES.get(PARTS[Part.body].mask_aliases.get(name, name), PARTIAL_DEFAULT)
    else:
        schedule = pick_schedule(noise_std)
    use_vertices = req.temporal == "vertices" or (req.temporal == "auto" and body.faces is not None)

    # ---- optimisation -------------------------------------------------------------------------------
    prior.nfe = 0
    t_opt = time.perf_counter()
    fit = denoise(prior, body, obs, visible_tf, schedule=schedule, world=world, use_vertices=use_vertices,
                  generator=gen, progress=progress)
    opt_seconds = time.perf_counter() - t_opt
    nfe = prior.nfe
    pose = fit["body_pose"]
    if not torch.isfinite(pose).all():
        raise InputError("denoising produced non-finite poses; check the input joints (units must be metres)")

    # ---- outputs ----------------------------------------------------------------------------------------
    with torch.no_grad():
        result = body(body_pose=pose, global_orient=fit.get("global_orient"), transl=fit.get("transl"),
                      return_vertices=req.render)
    joints_out = result.joints[:, b22]
    arrays = {"body_pose": pose.cpu().numpy(), "joints": joints_out.cpu().numpy(),
              "observed_joints": torch.where(visible_tf[..., None], obs, torch.nan).cpu().numpy()}
    if world:
        arrays["global_orient"] = fit["global_orient"].cpu().numpy()
        arrays["transl"] = fit["transl"].cpu().numpy()
    elif getattr(motion, "global_orient", None) is not None:
        arrays["global_orient"] = np.asarray(motion.global_orient, dtype=np.float32)  # passed through unchanged
    fps = float(req.fps or getattr(motion, "fps", None) or 30.0)
    outputs: dict[str, Path] = {"denoised": write_motion(out_dir / "denoised.npz", fps=fps, **arrays)}

    metrics: dict[str, float] = {}
    if gt is not None:
        metrics.update(motion_metrics(obs, joints_out, gt, visible_tf, partial))
    metrics["frames_per_second"] = frames / max(opt_seconds, 1e-9)
    if req.render:
        video = _render(out_dir / "comparison.mp4", obs, visible_tf, result, body, fps, req.renderer)
        if video is not None:
            outputs["comparison"] = video

    lines = [(f"denoised {frames} frames with {schedule.steps} steps ({nfe} network evaluations, schedule "
             f"{schedule.name}) from {prior.source}")]
    if "mpjpe_mm" in metrics:
        lines.append(f"MPJPE {metrics['mpjpe_input_mm']:.1f} mm (observations) → {metrics['mpjpe_mm']:.1f} mm")
    return Result(
        command="denoise-motion",
        outputs=outputs,
        metrics=metrics,
        info={"frames": frames, "fps": fps, "input_kind": "joints" if world else "poses",
              "noise_std_m": noise_std, "noise_added_m": added, "schedule": schedule.name,
              "steps": schedule.steps, "t_range": list(schedule.t_range), "nfe": nfe,
              "occluded_joints": [n for n, h in zip(_BODY22, hidden.tolist(), strict=True) if h] or None,
              "temporal_term": "vertices" if use_vertices else "joints", "body_model": body.kind,
              "checkpoint": prior.source, "seed": req.seed, "device": str(device)},
        seconds=time.perf_counter() - t0,
        lines=lines,
    )


def denoise(prior: DPoserPrior, body, obs: Tensor, visible: Tensor, *, schedule: Schedule,  # type: ignore[no-untyped-def]
            world: bool = False, use_vertices: bool = True, generator: torch.Generator | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Tensor]:
    """Fit body poses (T, 63) (and, with `world`, global orientation and translation) to body22 joints (T, 22, 3).

    All frames are one batch; one prior evaluation per step. `visible` (T, 22) bool switches the data
    term per joint. Returns {"body_pose"[, "global_orient", "transl"]}.
    """
    frames = obs.shape[0]
    device = obs.device
    b22 = body.joint_set("body22")
    vis = visible.to(obs.dtype)
    with torch.no_grad():
        start = torch.randn(frames, 63, generator=generator, device=device) * 0.01
        if not schedule.partial:  # the prior's mean pose (role of the SMPL mean pose, see module docstring)
            start = start + prior.denormalize(torch.zeros(63, device=device))
    pose = start.clone().requires_grad_(True)
    params = [pose]
    orient = transl = None
    if world:
        orient, transl = _rigid_init(body, b22, start, obs, visible)
        orient.requires_grad_(True)
        transl.requires_grad_(True)
        params += [orient, transl]
    opt = torch.optim.Adam(params, lr=0.03, betas=(0.9, 0.999), eps=1e-6 if schedule.partial else 1e-8)
    weighting = "snr" if schedule.partial else "none"
    total = schedule.steps
    for it in range(schedule.iterations):
        for s in range(schedule.steps_per_iter):
            k = it * schedule.steps_per_iter + s
            t = time_schedule(k, total, *schedule.t_range)
            out = body(body_pose=pose, global_orient=orient, transl=transl, return_vertices=use_vertices)
            joints = out.joints[:, b22]
            # mean over frames and the 22 joints (hidden ones contribute 0, as the official 1e-20 mask)
            data = ((joints - obs).norm(dim=-1) * vis).mean()
            pts = _temporal_points(out, use_vertices)
            temp = (pts[1:] - pts[:-1]).norm(dim=-1).mean()
            dposer = prior.loss(pose, t, weighting=weighting, generator=generator).mean()  # sum over dims / T
            if schedule.partial:
                loss = 100.0 * data + schedule.sds * (1 + it) * dposer + (20.0 * temp if it >= 2 else 0.0)
            else:
                loss = 10.0 * (1 + it) * temp + 100.0 / (1 + it**2) * data + 0.1 * (1 + it) * schedule.sds * dposer
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(k + 1, total)
    result = {"body_pose": pose.detach()}
    if schedule.partial:
        result["body_pose"] = gaussian_smooth(result["body_pose"], window=5, sigma=3.0, keep=2)
    if world:
        result["global_orient"], result["transl"] = orient.detach(), transl.detach()
    return result


TEMPORAL_VERTICES = 3000  # vertices used by the temporal term (a uniform subsample of the mesh)


def _temporal_points(out, use_vertices: bool) -> Tensor:  # type: ignore[no-untyped-def]
    """Points for the smoothness term: every k-th vertex (≈ TEMPORAL_VERTICES; the mean over a uniform
    subsample estimates the mean over all vertices at a fraction of the cost), else the joints."""
    if not use_vertices or out.vertices is None:
        return out.joints
    stride = max(1, out.vertices.shape[-2] // TEMPORAL_VERTICES)
    return out.vertices[..., ::stride, :].contiguous()  # contiguous: models may return frame-minor layouts


def gaussian_smooth(x: Tensor, *, window: int = 5, sigma: float = 3.0, keep: int = 2) -> Tensor:
    """Gaussian filter along time (dim 0) with edge padding; the first and last `keep` frames are kept."""
    if x.shape[0] <= 2 * keep:
        return x
    half = window // 2
    k = torch.exp(-0.5 * (torch.arange(-half, half + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    padded = torch.cat([x[:1].expand(half, -1), x, x[-1:].expand(half, -1)], 0)
    smooth = torch.stack([padded[i:i + x.shape[0]] for i in range(window)], 0)  # (window, T, D)
    out = (k[:, None, None] * smooth).sum(0)
    out[:keep], out[-keep:] = x[:keep], x[-keep:]
    return out


# ---- helpers ---------------------------------------------------------------------------------------------
_BODY22 = ("pelvis", *PARTS[Part.body].joint_names)


def _hidden_joints(occluded: tuple[str, ...], visible: tuple[str, ...], device: torch.device) -> Tensor:
    """(22,) bool over body22 from mask group names of the body part (body joint k ↔ body22 joint k+1)."""
    hidden = torch.zeros(22, dtype=torch.bool, device=device)
    if occluded:
        hidden[sorted({d // 3 + 1 for d in mask_dims(Part.body, list(occluded))})] = True
    elif visible:
        hidden[1:] = True
        hidden[sorted({d // 3 + 1 for d in mask_dims(Part.body, list(visible))})] = False
    return hidden


def _opt(motion, key: str, device: torch.device) -> Tensor | None:  # type: ignore[no-untyped-def]
    value = getattr(motion, key, None)
    return None if value is None else torch.as_tensor(np.asarray(value), dtype=torch.float32, device=device)


def _joints(body, b22: Tensor, pose: Tensor, orient: Tensor | None, transl: Tensor | None) -> Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return body(body_pose=pose, global_orient=orient, transl=transl, return_vertices=False).joints[:, b22]


def _select_body22(joints: Tensor, body, b22: Tensor, where: str) -> Tensor:  # type: ignore[no-untyped-def]
    if joints.ndim != 3 or joints.shape[-1] != 3:
        raise InputError(f"{where}: joints have shape {tuple(joints.shape)}; expected (T, 22, 3) in metres")
    if joints.shape[1] == 22:
        return joints
    if joints.shape[1] == len(body.joint_names):
        return joints[:, b22]
    raise InputError(f"{where}: joints have {joints.shape[1]} joints per frame; expected 22 (pelvis + 21 body "
                     f"joints, SMPL-X order) or the body model's {len(body.joint_names)}")


def _rigid_init(body, b22: Tensor, pose: Tensor, obs: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    """Per-frame global orientation (Kabsch on visible torso joints) and translation that place the start pose."""
    torso = torch.tensor([_BODY22.index(n) for n in TORSO], device=obs.device)
    with torch.no_grad():
        tmpl = body(body_pose=pose, return_vertices=False).joints[:, b22][:, torso]  # (T, K, 3)
        tgt, w = obs[:, torso], visible[:, torso].to(obs.dtype)[..., None]
        wsum = w.sum(1, keepdim=True).clamp_min(1.0)
        mt, mo = (tmpl * w).sum(1, keepdim=True) / wsum, (tgt * w).sum(1, keepdim=True) / wsum
        cov = ((tmpl - mt) * w).transpose(1, 2) @ (tgt - mo)  # (T, 3, 3)
        u, _, vh = torch.linalg.svd(cov)
        d = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
        fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
        rot = vh.transpose(1, 2) @ fix @ u.transpose(1, 2)  # rot @ tmpl ≈ tgt
        ok = (visible[:, torso].sum(1) >= 3)[:, None, None]
        rot = torch.where(ok, rot, torch.eye(3, device=obs.device))
        orient = matrix_to_axis_angle(rot)
        placed = body(body_pose=pose, global_orient=orient, return_vertices=False).joints[:, b22]
        vis = visible.to(obs.dtype)[..., None]
        transl = ((obs - placed) * vis).sum(1) / vis.sum(1).clamp_min(1.0)
    return orient.clone(), transl.clone()


def motion_metrics(obs: Tensor, pred: Tensor, gt: Tensor, visible: Tensor, partial: bool) -> dict[str, float]:
    """MPJPE in mm over frames × joints (spec §7.4 reports cm; ×10 to compare)."""
    vis = visible.to(obs.dtype)
    err_in = (obs - gt).norm(dim=-1)
    err = (pred - gt).norm(dim=-1)
    out = {"mpjpe_input_mm": float((err_in * vis).sum() / vis.sum() * 1000), "mpjpe_mm": float(err.mean() * 1000)}
    if partial:
        out["mpjpe_visible_mm"] = float((err * vis).sum() / vis.sum() * 1000)
        hid = 1 - vis
        out["mpjpe_occluded_mm"] = float((err * hid).sum() / hid.sum().clamp_min(1) * 1000)
    return out


def _render(path: Path, obs: Tensor, visible: Tensor, result, body, fps: float, renderer: str,  # type: ignore[no-untyped-def]
            size: int = 320) -> Path | None:
    """Video: the noisy observations (skeleton) beside the denoised body (mesh), one shared camera per frame
    so both halves have the same scale."""
    from dposer_cli.io.media import save_video
    from dposer_cli.render.draw import contact_sheet

    parents = body.parents[:22].cpu().numpy()
    noisy, vis = obs.cpu().numpy(), visible.cpu().numpy()
    mesh = result.vertices is not None and body.faces is not None
    verts = result.vertices.cpu().numpy() if mesh else None
    faces = body.faces.cpu().numpy() if mesh else None
    joints = result.joints[:, :22].cpu().numpy()
    try:
        frames = []
        for t in range(len(noisy)):
            j = noisy[t].copy()
            j[~vis[t]] = j[vis[t]].mean(0)  # hidden joints collapse onto the visible ones' centre
            right = {"vertices": verts[t], "faces": faces} if mesh else {"joints": joints[t], "parents": parents}
            frames.append(contact_sheet([{"joints": j, "parents": parents}, right], cols=2, cell=size,
                                        renderer=renderer, labels=["noisy joints", "denoised"]))
        return save_video(path, np.stack(frames), fps)
    except (UnavailableError, MissingAssetError) as exc:
        log.warning("no comparison video: %s", exc.message)
        return None
