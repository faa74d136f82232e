"""`dposer fit-image`: body, hand and whole-body mesh recovery from 2D keypoints (spec §7.6–§7.8).

A file-in/file-out shell around `tasks.fit.fit`: pair images with keypoint files and read the persons
(`io.frames`; images without keypoint files get MediaPipe detections, `io.detected`), load the body model and
the prior, fit every person of every image (or every frame of a folder or video file) in one batch, and write
per image `<stem>.npz` (parameters per person), `<stem>_overlay.png` and `<stem>_fit.png` (`tasks.pictures`).
Videos share one body shape per person and get the motion prior pass (`tasks.fit_motion`); they write
`motion.npz` (AMASS-style) and `overlay.mp4` instead of per-frame pictures, and report the jitter before and
after the pass. `--export` writes the fits upright as meshes or BVH (`tasks.export`, `io.export`).
"""

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dposer_cli.bodies import load_body
from dposer_cli.core import validate
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import DposerError, InputError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.optimize import PosePrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.priors import build_prior, check_prior
from dposer_cli.io.detected import detect_missing
from dposer_cli.io.frames import (
    Frame,
    check_init_width,
    parse_person,
    read_init,
    read_persons,
    resolve_frames,
    video_tracks,
)
from dposer_cli.io.keypoints import KEYPOINT_FORMATS
from dposer_cli.services._fit_outputs import write_exports, write_images, write_video
from dposer_cli.tasks.export import check_formats
from dposer_cli.tasks.fit import CONF_THRESHOLD, FIT_SPECS, FitInput, check_keypoint_layout, fit, init_widths
from dposer_cli.tasks.fit_motion import motion_metrics, smooth_tracks

log = logging.getLogger(__name__)

FIT_PARTS = tuple(FIT_SPECS)
FIT_PRIORS = ("dposer", "none", "l2")  # --prior kinds of fit-image (others through `prior_model`)
MAX_VIDEO_FRAMES = 600  # frames fitted at once (one batch) unless --max-frames says otherwise


@dataclass(frozen=True)
class FitImageRequest:
    images: tuple[Path, ...]
    out: Path
    part: Part = Part.body
    keypoints: tuple[Path, ...] = ()
    keypoint_format: str = "auto"
    person: str = "all"
    init: tuple[Path, ...] = ()
    focal: float | None = None
    steps: int = 100
    prior: str = "dposer"
    body_model: Path | None = None
    checkpoint: Path | None = None
    normalizer: Path | None = None
    # Python API: an already-built prior of `part` (a DPoserPrior, or a baseline from engine.baselines such as
    # the GMM) used instead of loading one; `prior` is then only its label in the outputs
    prior_model: PosePrior | None = None
    renderer: str = "auto"
    device: str = "auto"
    seed: int = 0
    temporal: bool = False
    overlay: bool = True
    conf_threshold: float = CONF_THRESHOLD
    # images without keypoints: detected keypoints go to this .json (one image) or folder; None: out/
    save_keypoints: Path | None = None
    export: tuple[str, ...] = ()  # also write the fits as glb / obj / ply meshes or BVH (turned upright)
    motion_prior: bool = True  # videos: the motion prior pass (tasks.denoise_motion) after the per-frame fits
    max_frames: int | None = None  # videos: fit the first N frames (None: refuse more than MAX_VIDEO_FRAMES)


def _validate(req: FitImageRequest) -> None:
    if req.part not in FIT_SPECS:
        raise InputError(f"fit-image fits body, hand or wholebody, not --part {req.part.value}")
    if req.prior_model is None:
        check_prior(req.prior, req.part, allowed=FIT_PRIORS)
    if req.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {req.steps})")
    if req.focal is not None and not req.focal > 0:
        raise InputError(f"--focal must be a positive number of pixels (got {req.focal})")
    if not 0 <= req.conf_threshold < 1:
        raise InputError(f"the confidence threshold must be in [0, 1) (got {req.conf_threshold})")
    parse_person(req.person)
    if req.max_frames is not None and req.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1 (got {req.max_frames})")
    if req.keypoint_format not in KEYPOINT_FORMATS:
        raise InputError(
            f"unknown --keypoint-format {req.keypoint_format!r}"
            f"{suggest(req.keypoint_format, list(KEYPOINT_FORMATS))}",
            hint="formats: " + ", ".join(KEYPOINT_FORMATS),
        )


def _check_length(req: FitImageRequest, frames: list[Frame]) -> None:
    """Videos are fitted in one batch: refuse more than MAX_VIDEO_FRAMES frames unless --max-frames asks."""
    if req.max_frames is None and len(frames) > MAX_VIDEO_FRAMES:
        raise InputError(
            f"{frames[0].image if frames[0].video_frame >= 0 else frames[0].image.parent}: "
            f"{len(frames)} frames; fit-image fits at most {MAX_VIDEO_FRAMES} video frames at once "
            "(one batch, one body shape)",
            hint="pass --max-frames N to fit the first N frames (more takes longer and more "
            "memory), or cut the video",
        )


PENDING_KEYPOINTS = ".keypoints-pending"  # in the output folder: detections bound for --save-keypoints


def _pending_keypoints(target: Path | None, out: Path) -> Path | None:
    """Where detections bound for `target` (--save-keypoints) are written during the run: in the output
    folder (staged with the run's outputs, so a failed run leaves nothing behind), the same layout."""
    if target is None:
        return None
    root = out / PENDING_KEYPOINTS
    return root / target.name if target.suffix.lower() == ".json" else root


def _move_keypoints(files: list[Path], pending: Path, target: Path, out: Path) -> dict[Path, Path]:
    """Move the detections of a successful run from `pending` (in `out`) to `target`; {pending file: final
    file}."""
    moved: dict[Path, Path] = {}
    for src in files:
        dst = target if src == pending else target / src.relative_to(pending)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)
        moved[src] = dst
    shutil.rmtree(out / PENDING_KEYPOINTS)
    return moved


def _load_prior(
    req: FitImageRequest, device: torch.device
) -> tuple[PosePrior, torch.Tensor | None, str | None]:
    """The prior, the starting mean pose and the checkpoint label: `prior_model` if given, else `--prior`
    (none/l2 still start from the DPoser prior's mean pose when one is found)."""
    if req.prior_model is not None:
        part = getattr(req.prior_model, "part", None)
        if part is not None and Part(part) is not req.part:
            raise InputError(
                f"the given prior is a {Part(part).value} prior, but the fit is --part {req.part.value}"
            )
        prior = req.prior_model.to(device) if hasattr(req.prior_model, "to") else req.prior_model
        return prior, None, getattr(prior, "source", None)
    if req.prior == "dposer":
        prior = build_prior(
            "dposer", req.part, checkpoint=req.checkpoint, normalizer=req.normalizer, device=device
        )
        return prior, None, prior.source
    try:
        dposer = DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    except DposerError as exc:
        log.info("no prior for the initial mean pose (%s); starting from the zero pose", exc.message)
        dposer = None
    mean = dposer.normalizer.mean if dposer is not None else None
    source = dposer.source if dposer is not None else None
    return build_prior(req.prior, req.part, device=device), mean, source


def _motion_prior(req: FitImageRequest, prior: PosePrior, device: torch.device) -> DPoserPrior | None:
    """The body prior of the motion pass: the fit's own DPoser body prior, else (whole body) the default body
    prior; none with --prior none/l2, for hands, or when turned off."""
    if not req.motion_prior or req.part not in (Part.body, Part.wholebody):
        return None
    if isinstance(prior, DPoserPrior) and prior.part is Part.body:
        return prior
    if req.prior != "dposer" or req.prior_model is not None:
        log.info("no motion prior pass with --prior %s", req.prior)
        return None
    return DPoserPrior.load(Part.body, device=device)


# ---------------------------------------------------------------- the command
def run(req: FitImageRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Fit every person of every image in one batch; write `<stem>.npz` and `<stem>_overlay.png` per image."""
    t0 = time.perf_counter()
    _validate(req)
    spec = FIT_SPECS[req.part]
    formats = check_formats(req.export, part=req.part, what="hand fits")
    frames = resolve_frames(req.images, req.keypoints, missing_ok=True, max_frames=req.max_frames)
    validate.count("images", len(frames), validate.MAX_FILES)
    video = frames[0].sequence >= 0
    if req.temporal and not video:
        raise InputError("--temporal needs a folder of frames (a video), not single images")
    _check_length(req, frames)
    device = resolve_device(req.device)
    out = ensure_out_dir(req.out)
    # --save-keypoints outside the output folder: detections wait in it until the run has succeeded
    pending = _pending_keypoints(req.save_keypoints, out)
    detected = detect_missing(frames, out, save_keypoints=pending, hand=req.part is Part.hand)
    persons = read_persons(
        frames,
        keypoint_format=req.keypoint_format,
        part=req.part.value,
        person=parse_person(req.person),
        conf_threshold=req.conf_threshold,
        min_keypoints=spec.min_keypoints,
        counted_keypoints=spec.counted_keypoints,
    )
    check_keypoint_layout(req.part, persons.layout)
    # --init before the body model and the prior (bad files fail fast); shape widths once the model is known
    init = read_init(req.init, len(frames), persons.frame, persons.person, widths=init_widths(req.part))
    model = load_body(spec.body, req.body_model, device)
    for key, width in init_widths(req.part, model).items():  # + betas, expression
        if key in init:
            check_init_width(key, init[key].shape[-1], width)
    prior, mean_pose, source = _load_prior(req, device)
    if source is not None:
        log.info("%s prior: %s", req.part.value, source)
    inputs = FitInput.for_images(
        persons.keypoints,
        persons.image_size,
        focal=req.focal,
        conf_threshold=req.conf_threshold,
        track=persons.track if video else None,
        frame=persons.frame,
        device=device,
    )
    fitted = fit(
        model,
        prior,
        inputs,
        part=req.part,
        keypoint_layout=persons.layout,
        steps=req.steps,
        init={k: torch.as_tensor(v, device=device) for k, v in init.items()},
        temporal=req.temporal,
        generator=make_generator(req.seed, device),
        progress=progress,
        mean_pose=mean_pose,
    )
    outputs, images = write_images(
        out,
        frames,
        persons,
        inputs,
        model,
        fitted,
        overlay=req.overlay,
        labels={"part": req.part.value, "prior": req.prior},
        renderer=req.renderer,
        conf_threshold=req.conf_threshold,
    )
    n, px, fit_seconds = len(persons.frame), fitted.reprojection_px, fitted.fit_seconds
    metrics = {
        "reprojection_error_px": float(px.mean()),
        "reprojection_loss": float(fitted.data_loss.mean()),
        "fits_per_second": n / max(fit_seconds, 1e-9),
    }
    info: dict[str, object] = {
        "part": req.part.value,
        "prior": req.prior,
        "checkpoint": source,
        "body_model": model.kind,
        "persons": n,
        "frames": len(frames),
        "steps": req.steps,
        "nfe": fitted.nfe,
        "fit_seconds": round(fit_seconds, 4),
        "prior_seconds": round(fitted.prior_seconds, 4),
        "device": str(device),
        "seed": req.seed,
        "stage_losses": fitted.stage_losses,
        "images": images,
    }
    lines = [
        (
            f"fitted {n} {'hand' if req.part is Part.hand else 'person'}(s) in {len(frames)} image(s) "
            f"with {req.prior} prior in {fit_seconds:.1f} s ({fitted.nfe} network evaluations); mean "
            f"reprojection error {float(px.mean()):.1f} px"
        )
    ]
    if detected:
        info["detected_keypoints"] = detected
        outputs["keypoints"] = detected
        lines.insert(
            0,
            f"no keypoint files for {len(detected)} image(s): detected them with MediaPipe (one person "
            "per image, the most prominent; pass --keypoints for several people), saved as "
            f"COCO-WholeBody JSON ({detected[0].name}{', ...' if len(detected) > 1 else ''})",
        )
    tracks, motions = video_tracks(persons, frames) if video else [], []
    if video:
        motions = smooth_tracks(
            model,
            _motion_prior(req, prior, device),
            fitted,
            inputs,
            [t.rows for t in tracks],
            part=req.part,
            generator=make_generator(req.seed, device),
            progress=progress,
        )
        outputs.update(
            write_video(
                out,
                frames,
                persons,
                inputs,
                model,
                fitted,
                tracks,
                motions,
                overlay=req.overlay,
                renderer=req.renderer,
                conf_threshold=req.conf_threshold,
            )
        )
        jitter = motion_metrics(motions)
        metrics.update(jitter)
        if jitter:
            lines.append(
                f"jitter (mean joint acceleration): {jitter['jitter_before_mm']:.1f} mm/frame² per-frame fits"
                + (
                    f" → {jitter['jitter_after_mm']:.1f} mm/frame² after the motion prior pass (reprojection "
                    f"error {jitter['motion_reprojection_error_px']:.1f} px)"
                    if "motion_reprojection_error_px" in jitter
                    else " (no motion prior pass)"
                )
            )
        info["motion_prior"] = any(m.smoothed for m in motions)
    outputs.update(write_exports(out, formats, frames, persons, model, fitted, tracks, motions))
    if detected and pending is not None and req.save_keypoints is not None:
        moved = _move_keypoints(detected, pending, req.save_keypoints, out)
        detected[:] = [moved[p] for p in detected]
        for entry in images:
            entry["keypoints"] = moved.get(entry["keypoints"], entry["keypoints"])
    return Result(
        command="fit-image",
        outputs=outputs,
        metrics=metrics,
        info=info,
        seconds=time.perf_counter() - t0,
        lines=lines,
    )
