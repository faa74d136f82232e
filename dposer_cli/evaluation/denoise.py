"""`benchmark denoise`: motion denoising on HumanEva 60-frame clips cut from AMASS (spec §7.4, §7.5, §8.2).

`--data-dir` is an AMASS-style tree of motion npz files (the HumanEva subset); every sequence is cut into
non-overlapping 60-frame clips. Ground truth: the clip's body poses through the body model with zero global
orientation, shape and translation (as the official script); observations: its body22 joints plus Gaussian
noise (settings `20mm`, `40mm`, `100mm`), or without noise with a part hidden (`legs`, `left_arm`,
`right_body`: the partial-visibility variant). Each clip is solved by `tasks.denoise_motion` with the official
schedule of its setting, seeded per clip. Metrics per clip (mm): MPJPE over the 22 joints, MPVPE over all
vertices (when the body model has a mesh), MPJPE of the observations, and for hidden parts visible/occluded
MPJPE; averaged over clips.
"""

import logging
from typing import Any

import numpy as np
import torch

from dposer_cli.core.parts import Part, mask_dims
from dposer_cli.evaluation.common import Context, Outcome, concat, mean_of, scaled_schedule
from dposer_cli.evaluation.paper import paper_for
from dposer_cli.io.datasets import humaneva_clips
from dposer_cli.metrics import mpjpe
from dposer_cli.tasks import denoise_motion as dm

log = logging.getLogger(__name__)

NOISE = {"20mm": 0.02, "40mm": 0.04, "100mm": 0.1}
PARTIAL = ("legs", "left_arm", "right_body")
SETTINGS = (*NOISE, *PARTIAL)
DEFAULT = ("40mm",)
CLIP_FRAMES = 60


def schedule_for(setting: str, steps: int | None = None) -> dm.MotionSchedule:
    """The official schedule of a setting, scaled to about `steps` steps in all (None: the official count)."""
    base = dm.PARTIAL_SCHEDULES[setting] if setting in PARTIAL else dm.SCHEDULES[NOISE[setting]]
    return scaled_schedule(base, steps)


def run(ctx: Context) -> Outcome:
    req = ctx.req
    assert req.data_dir is not None
    clips = humaneva_clips(req.data_dir, CLIP_FRAMES)
    n = ctx.limit(len(clips))
    clips = clips[:n]
    prior = ctx.prior(Part.body)
    body = ctx.body("body")
    b22 = body.joint_set("body22")
    settings = tuple(req.settings) or DEFAULT
    metrics: dict[str, dict[str, float]] = {}
    paper: dict[str, Any] = {}
    schedules: dict[str, dict[str, Any]] = {}
    nfe = 0
    for k, setting in enumerate(settings):
        partial = setting in PARTIAL
        schedule = schedule_for(setting, req.steps)
        schedules[setting] = {
            "name": schedule.name,
            "steps": schedule.steps,
            "t_range": list(schedule.t_range),
            "noise_std_m": 0.0 if partial else NOISE[setting],
        }
        hidden = torch.zeros(22, dtype=torch.bool, device=ctx.device)
        if partial:  # body joint j ↔ body22 joint j + 1
            hidden[sorted({d // 3 + 1 for d in mask_dims(Part.body, [setting])})] = True

        def batch(
            b: int,
            sl: slice,
            k: int = k,
            partial: bool = partial,
            hidden: torch.Tensor = hidden,
            schedule: Any = schedule,
            setting: str = setting,
        ) -> dict[str, np.ndarray]:
            rows = []
            for i in range(
                sl.start, sl.stop
            ):  # one optimisation per clip (the temporal term spans its frames)
                gen = ctx.generator(i + 1_000_003 * k)  # per clip: independent of batching and sharding
                pose = torch.as_tensor(clips[i].body_pose, device=ctx.device)
                with torch.no_grad():
                    truth = body(body_pose=pose)
                gt = truth.joints[:, b22]
                noise = 0.0 if partial else NOISE[setting]
                obs = gt + noise * torch.randn(gt.shape, generator=gen, device=ctx.device)
                visible = (~hidden).expand(len(gt), 22)
                obs = torch.where(visible[..., None], obs, torch.zeros((), device=ctx.device))
                fit = dm.denoise_motion(prior, body, obs, visible, schedule=schedule, generator=gen)
                with torch.no_grad():
                    pred = body(body_pose=fit.params["body_pose"])
                m = dm.motion_metrics(obs, pred.joints[:, b22], gt, visible, partial)
                if pred.vertices is not None and truth.vertices is not None:
                    m["mpvpe_mm"] = float(mpjpe(pred.vertices, truth.vertices).mean() * 1000)
                rows.append(m)
            return {key: np.array([r[key] for r in rows]) for key in rows[0]}

        prior.nfe = 0
        per = concat(ctx.map_batches(n, batch, default_batch=1))
        nfe += prior.nfe
        metrics[setting] = mean_of(per)
        entry = paper_for("denoise", setting)
        if entry:
            paper[setting] = entry
    return Outcome(
        metrics=metrics,
        paper=paper,
        items=n,
        info={"nfe": nfe},
        body_model=body.kind,
        settings={
            "clips": n,
            "clip_frames": CLIP_FRAMES,
            "schedules": schedules,
            "body_model": body.kind,
            "temporal_term": "vertices" if body.faces is not None else "joints",
            "data_dir": str(req.data_dir),
            "source": prior.source,
            "units": "mm (Table S-7 publishes cm; its numbers are shown ×10)",
        },
        lines=[f"denoised {n} clips of {CLIP_FRAMES} frames ({', '.join(settings)})"],
    )
