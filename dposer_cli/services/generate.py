"""`dposer generate`: sample poses from the prior (`tasks.sample`), save them (npz, optional JSON), render a
grid and, with `process_video`, a video of the sampling process (`render.process`)."""

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dposer_cli.core import validate
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import InputError, MissingAssetError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import atomic_write, ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.samplers import DEFAULT_SAMPLER
from dposer_cli.io.export import write_bvh, write_meshes
from dposer_cli.io.media import save_video
from dposer_cli.io.poses import write_poses
from dposer_cli.io.report import jsonable
from dposer_cli.render.process import MAX_VIDEO_FRAMES, NOISY_COLOR, process_frames, video_timing
from dposer_cli.render.scene import BODY_COLOR
from dposer_cli.services._render import load_part_body, render_sheet
from dposer_cli.tasks.export import SkeletonMotion, check_formats, export_data, part_params
from dposer_cli.tasks.pictures import chart_process_frames, grid_count, pose_items, view_for
from dposer_cli.tasks.sample import Trajectory, check_sampler, sample

log = logging.getLogger(__name__)

PROCESS_FRAMES = 90  # recorded steps + the result; the final hold fills the rest of MAX_VIDEO_FRAMES
VIDEO_SAMPLES = 8  # samples shown side by side in process.mp4 (the first ones)
FK_CHUNK = 128  # poses posed per body-model call while drawing the video


@dataclass(frozen=True)
class GenerateRequest:
    part: Part
    n: int = 10
    out: Path = Path("dposer_out")
    sampler: str = DEFAULT_SAMPLER
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
    process_video: bool = False  # also record the sampling trajectory and write process.mp4
    grid: int | None = None  # poses drawn in grid.png (the first ones); None: 64 (whole body 16)
    export: tuple[str, ...] = ()  # also write poses.glb / .obj / .ply / .bvh (tasks.export.check_formats)


def run(req: GenerateRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    t0 = time.perf_counter()
    if req.n < 1:
        raise InputError(f"-n must be at least 1 (got {req.n})")
    check_sampler(req.sampler)
    if req.steps is not None and req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    if req.grid is not None and req.grid < 0:
        raise InputError(f"--grid must be 0 (no picture) or more (got {req.grid})")
    formats = check_formats(req.export, part=req.part)
    if req.process_video:  # x_t and x̂0 of the first samples at every recorded step, float64 at most
        rows = min(req.n, VIDEO_SAMPLES)
        validate.memory(
            f"the sampling trajectory ({rows} samples × {PROCESS_FRAMES} frames)",
            rows * PROCESS_FRAMES * PARTS[req.part].dim * 8 * 2,
            hint="leave out --process-video",
        )
    out = ensure_out_dir(req.out)
    device = resolve_device(req.device)
    prior = DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    body = load_part_body(req.part, req.body_model, device) if formats else None  # a face needs FLAME
    log.info("using %s prior (%s)", req.part.value, prior.source)
    res = sample(
        prior,
        req.n,
        sampler=req.sampler,
        steps=req.steps,
        t_end=req.t_end,
        generator=make_generator(req.seed, device),
        progress=progress,
        return_trajectory=req.process_video,
        max_frames=PROCESS_FRAMES,
        trajectory_samples=VIDEO_SAMPLES,
    )
    poses = res.poses
    if not torch.isfinite(poses).all():
        raise InputError("sampling produced non-finite values; try another --sampler or more --steps")

    outputs: dict[str, Path | list[Path]] = {
        "poses": write_poses(out / "poses.npz", req.part, poses.cpu().numpy())
    }
    lines = [
        f"sampled {req.n} {req.part.value} poses with {req.sampler} ({res.nfe} network evaluations) "
        f"from {prior.source}"
    ]
    if req.poses_json:
        slices = PARTS[req.part].slices()
        named = {k: poses[:, s].cpu().numpy() for k, s in slices.items()}
        with atomic_write(out / "poses.json", "w") as fh:
            json.dump(jsonable({"part": req.part.value, **named}), fh)
        outputs["poses_json"] = out / "poses.json"
    shown = grid_count(req.part, req.n, req.grid) if req.render else 0
    if shown:
        if shown < req.n:
            lines.append(f"grid.png shows the first {shown} of {req.n} poses (--grid N to change)")
        title = (
            f"{req.part.value}: {'the first ' if shown < req.n else ''}{shown} of {req.n} samples"
            f"{' (--grid N for more)' if shown < req.n else ''}"
        )
        grid = render_sheet(
            req.part,
            poses,
            out / "grid.png",
            body_model=req.body_model,
            renderer=req.renderer,
            device=device,
            max_items=shown,
            title=title,
        )
        if grid is not None:
            outputs["grid"] = grid
    if body is not None:  # --export: a mesh per pose / a BVH with a frame per pose
        for fmt, data in export_data(body, part_params(req.part, poses), formats, name="poses").items():
            outputs[f"export_{fmt}"] = (
                write_bvh(out / "poses.bvh", *data.bvh_args())
                if isinstance(data, SkeletonMotion)
                else write_meshes(out / "poses", data.vertices, data.faces, fmt)
            )
    if res.trajectory is not None:
        video = _process_video(req, res.trajectory, out / "process.mp4", device, lines)
        if video is not None:
            outputs["process_video"] = video
    if getattr(prior, "healthy", None) is False:
        lines.append(f"warning: {prior.source} was marked unhealthy by `dposer train` (see its log)")
    return Result(
        command="generate",
        outputs=outputs,
        metrics={"samples_per_second": res.samples_per_second},
        info={
            "part": req.part.value,
            "n": req.n,
            "checkpoint": prior.source,
            "sampler": req.sampler,
            "steps": res.steps,
            "nfe": res.nfe,
            "seed": req.seed,
            "device": str(device),
            "grid_count": shown if "grid" in outputs else 0,
            "prior_healthy": getattr(prior, "healthy", None),
        },
        seconds=time.perf_counter() - t0,
        lines=lines,
    )


class _PosedFrames(Sequence[list[dict]]):
    """Trajectory frames as render items (noisy row over denoised row), posed lazily in chunks of frames."""

    def __init__(self, part: Part, traj: Trajectory, body_model: Path | None, device: torch.device) -> None:
        self.part = part
        self.body = load_part_body(part, body_model, device)  # once: a face without FLAME fails here
        self.poses = torch.cat([traj.x, traj.denoised], dim=1)  # (F, 2M, D): x_t row, then x̂0 row
        self.chunk = max(1, FK_CHUNK // self.poses.shape[1])
        self._cached: tuple[int, list[dict]] = (-1, [])

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, k: int) -> list[dict]:  # type: ignore[override]  # frames are read one by one
        start = k - k % self.chunk
        if self._cached[0] != start:
            block = self.poses[start : start + self.chunk]
            items = pose_items(self.part, block.reshape(-1, block.shape[-1]), self.body)
            self._cached = (start, items)
        m = self.poses.shape[1]
        return self._cached[1][(k - start) * m : (k - start + 1) * m]


def _process_video(
    req: GenerateRequest, traj: Trajectory, path: Path, device: torch.device, lines: list[str]
) -> Path | None:
    """process.mp4: the first samples side by side, x_t over x̂0, from pure noise to the result. Faces without
    FLAME show their numbers (jaw hinge and expression bars, or shape bars) instead of meshes."""
    m = traj.x.shape[1]
    steps, times = traj.step.tolist(), traj.t.tolist()
    captions = [
        f"{req.sampler} · step {s}/{traj.steps} · t = {t:.3f}" + (" · result" if s == traj.steps else "")
        for s, t in zip(steps, times)
    ]
    fps, hold = video_timing(len(captions), MAX_VIDEO_FRAMES)
    if req.n > m:
        log.info("process video shows the first %d of %d samples", m, req.n)
    try:
        frames = _PosedFrames(req.part, traj, req.body_model, device)
    except MissingAssetError as exc:
        if req.part not in (Part.face, Part.face_shape):
            msg = f"no process video for --part {req.part.value}: {exc.message}"
            log.warning(msg)
            lines.append(msg)
            return None
        msg = "no FLAME model found, so process.mp4 shows the coefficients as numbers (meshes need FLAME)"
        log.info(msg)
        lines.append(msg)
        log.info("drawing the sampling process: %d frames of %d samples", len(captions) + hold, m)
        charts = chart_process_frames(
            req.part,
            [traj.x.cpu().numpy(), traj.denoised.cpu().numpy()],
            captions=captions,
            row_labels=["x_t", "x0"],
            cell=min(256, max(160, 1280 // m)),
            hold=hold,
        )
        return save_video(path, charts, fps=fps)
    log.info("rendering the sampling process: %d frames of %d samples", len(frames) + hold, m)
    video = process_frames(
        frames,
        captions=captions,
        cols=m,
        row_labels=["x_t · noisy state", "x0 · denoised estimate"],
        row_colors=[NOISY_COLOR, BODY_COLOR],
        cell=min(256, max(128, 1280 // m)),
        renderer=req.renderer,
        view=view_for(req.part),
        hold=hold,
    )
    return save_video(path, np.asarray(video), fps=fps)
