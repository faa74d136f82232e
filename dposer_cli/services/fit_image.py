"""`dposer fit-image`: body, hand and whole-body mesh recovery from 2D keypoints (spec §7.6–§7.8).

A file-in/file-out shell around `tasks.fit.fit`: pair images with keypoint files and read the persons
(`io.frames`), load the body model and the prior, fit every person of every image (or every frame of a
folder or video file) in one batch, and write per image `<stem>.npz` (parameters per person) and
`<stem>_overlay.png` (mesh and keypoints over the photo).

Images without keypoint files get detections (`io.detect`, MediaPipe: the most prominent person), saved as
COCO-WholeBody JSON and then read like any keypoint file. Videos (frame folders, video files) share one body
shape per person and get the motion prior pass (`tasks.denoise_motion` on the fitted joints); they write
`motion.npz` (AMASS-style) and `overlay.mp4` instead of per-frame pictures, and report the jitter before and
after the pass. `--export` writes the fits upright as meshes or BVH (`tasks.export`, `io.export`).
"""

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dposer_cli.bodies import BodyModel, BodyOutput, load_body
from dposer_cli.bodies import camera as cam
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import DposerError, InputError, MissingAssetError, UnavailableError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import atomic_write, ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.optimize import PosePrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.priors import build_prior, check_prior
from dposer_cli.io.detect import DETECT_HINT, DETECTOR, detect_keypoints, write_coco_wholebody
from dposer_cli.io.export import write_bvh, write_meshes
from dposer_cli.io.frames import Frame, FramePersons, parse_person, read_init, read_persons, resolve_frames
from dposer_cli.io.keypoints import KEYPOINT_FORMATS, Keypoints2D
from dposer_cli.io.media import read_image, read_video_frames, save_image, save_video
from dposer_cli.io.motion import write_motion
from dposer_cli.render.draw import (
    draw_keypoints,
    draw_segments,
    legend,
    overhead_view,
    overlay_mesh,
)
from dposer_cli.render.scene import PERSON_COLORS
from dposer_cli.tasks.denoise_motion import MotionSchedule, denoise_motion, pick_schedule
from dposer_cli.tasks.export import SkeletonMotion, check_formats, export_data, skeleton_motion
from dposer_cli.tasks.fit import (
    CONF_THRESHOLD,
    FIT_SPECS,
    FitInput,
    FitResult,
    body_vertices,
    check_keypoint_layout,
    confident_keypoints,
    fit,
)

log = logging.getLogger(__name__)

FIT_PARTS = tuple(FIT_SPECS)
FIT_PRIORS = ("dposer", "none", "l2")  # --prior kinds of fit-image (others through `prior_model`)
MAX_VIDEO_FRAMES = 600  # frames fitted at once (one batch) unless --max-frames says otherwise
OVERLAY_VIDEO_SIDE = 640  # overlay.mp4 frames are downsampled (by an integer factor) to at most this side


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
        raise InputError(f"unknown --keypoint-format {req.keypoint_format!r}"
                         f"{suggest(req.keypoint_format, list(KEYPOINT_FORMATS))}",
                         hint="formats: " + ", ".join(KEYPOINT_FORMATS))


def _load_prior(req: FitImageRequest, device: torch.device
                ) -> tuple[PosePrior, torch.Tensor | None, str | None]:
    """The prior, the starting mean pose and the checkpoint label: `prior_model` if given, else `--prior`
    (none/l2 still start from the DPoser prior's mean pose when one is found)."""
    if req.prior_model is not None:
        part = getattr(req.prior_model, "part", None)
        if part is not None and Part(part) is not req.part:
            raise InputError(f"the given prior is a {Part(part).value} prior, but the fit is "
                             f"--part {req.part.value}")
        prior = req.prior_model.to(device) if hasattr(req.prior_model, "to") else req.prior_model
        return prior, None, getattr(prior, "source", None)
    if req.prior == "dposer":
        prior = build_prior("dposer", req.part, checkpoint=req.checkpoint, normalizer=req.normalizer,
                            device=device)
        return prior, None, prior.source
    try:
        dposer = DPoserPrior.load(req.part, req.checkpoint, normalizer=req.normalizer, device=device)
    except DposerError as exc:
        log.info("no prior for the initial mean pose (%s); starting from the zero pose", exc.message)
        dposer = None
    mean = dposer.normalizer.mean if dposer is not None else None
    source = dposer.source if dposer is not None else None
    return build_prior(req.prior, req.part, device=device), mean, source


def _inputs(req: FitImageRequest, persons: FramePersons, video: bool, device: torch.device) -> FitInput:
    """The batch as tensors: low-confidence keypoints zeroed, focal length = the image diagonal by default."""
    kp = torch.as_tensor(persons.keypoints, dtype=torch.float32, device=device)
    sizes = persons.image_size.tolist()
    focals = [req.focal if req.focal is not None else cam.estimate_focal(float(w), float(h)) for h, w in sizes]
    return FitInput(
        keypoints=confident_keypoints(kp, req.conf_threshold),
        focal=torch.tensor([float(f) for f in focals], dtype=torch.float32, device=device),
        center=torch.tensor([(w / 2, h / 2) for h, w in sizes], dtype=torch.float32, device=device),
        image_size=torch.tensor(sizes, dtype=torch.float32, device=device),
        track=torch.as_tensor(persons.track, device=device) if video else None,
        frame=torch.as_tensor(persons.frame, device=device),
    )


# ---------------------------------------------------------------- the command
def run(req: FitImageRequest, progress: Callable[[int, int], None] | None = None) -> Result:
    """Fit every person of every image in one batch; write `<stem>.npz` and `<stem>_overlay.png` per image."""
    t0 = time.perf_counter()
    _validate(req)
    spec = FIT_SPECS[req.part]
    formats = check_formats(req.export, part=req.part, what="hand fits")
    frames = resolve_frames(req.images, req.keypoints, missing_ok=True, max_frames=req.max_frames)
    video = frames[0].sequence >= 0
    if req.temporal and not video:
        raise InputError("--temporal needs a folder of frames (a video), not single images")
    _check_length(req, frames)
    device = resolve_device(req.device)
    out = ensure_out_dir(req.out)
    detected = _detect_missing(req, out, frames)
    persons = read_persons(frames, keypoint_format=req.keypoint_format, part=req.part.value,
                           person=parse_person(req.person), conf_threshold=req.conf_threshold,
                           min_keypoints=spec.min_keypoints, counted_keypoints=spec.counted_keypoints)
    model = load_body(spec.body, req.body_model, device)
    check_keypoint_layout(req.part, persons.layout)
    prior, mean_pose, source = _load_prior(req, device)
    if source is not None:
        log.info("%s prior: %s", req.part.value, source)
    init = read_init(req.init, len(frames), persons.frame, persons.person)
    inputs = _inputs(req, persons, video, device)
    fitted = fit(model, prior, inputs, part=req.part, keypoint_layout=persons.layout,
                 steps=req.steps, init={k: torch.as_tensor(v, device=device) for k, v in init.items()},
                 temporal=req.temporal, generator=make_generator(req.seed, device), progress=progress,
                 mean_pose=mean_pose)
    outputs, images = _write_outputs(req, out, frames, persons, inputs, model, fitted)
    n, px, fit_seconds = len(persons.frame), fitted.reprojection_px, fitted.fit_seconds
    metrics = {"reprojection_error_px": float(px.mean()), "reprojection_loss": float(fitted.data_loss.mean()),
               "fits_per_second": n / max(fit_seconds, 1e-9)}
    info: dict[str, object] = {"part": req.part.value, "prior": req.prior, "checkpoint": source, "body_model": model.kind,
                               "persons": n, "frames": len(frames), "steps": req.steps, "nfe": fitted.nfe,
                               "fit_seconds": round(fit_seconds, 4), "prior_seconds": round(fitted.prior_seconds, 4),
                               "device": str(device), "seed": req.seed, "stage_losses": fitted.stage_losses,
                               "images": images}
    lines = [(f"fitted {n} {'hand' if req.part is Part.hand else 'person'}(s) in {len(frames)} image(s) "
              f"with {req.prior} prior in {fit_seconds:.1f} s ({fitted.nfe} network evaluations); mean "
              f"reprojection error {float(px.mean()):.1f} px")]
    if detected:
        info["detected_keypoints"] = detected
        outputs["keypoints"] = detected
        lines.insert(0, f"no keypoint files for {len(detected)} image(s): detected them with MediaPipe (one person "
                        "per image, the most prominent; pass --keypoints for several people), saved as "
                        f"COCO-WholeBody JSON ({detected[0].name}{', ...' if len(detected) > 1 else ''})")
    if video:
        motions = _motions(req, model, prior, fitted, inputs, persons, frames, device, progress)
        outputs.update(_write_motions(req, out, frames, persons, inputs, model, fitted, motions))
        metrics.update(_motion_metrics(motions, lines))
        info["motion_prior"] = any(m.smoothed for m in motions)
    outputs.update(_export(req, out, formats, frames, persons, model, fitted, motions if video else []))
    return Result(command="fit-image", outputs=outputs, metrics=metrics, info=info,
                  seconds=time.perf_counter() - t0, lines=lines)


def _write_outputs(req: FitImageRequest, out: Path, frames: list[Frame], persons: FramePersons,
                   inputs: FitInput, model: BodyModel, fitted: FitResult
                   ) -> tuple[dict[str, Path | list[Path]], list[dict]]:
    """One npz (+ overlay) per image that has fitted persons; per-image summary entries."""
    keep = fitted.layout.kp_keep.cpu().numpy()
    px, data = fitted.reprojection_px.cpu().numpy(), fitted.data_loss.cpu().numpy()
    npz_files: list[Path] = []
    overlays: list[Path] = []
    views: list[Path] = []
    images: list[dict] = []
    for f_idx, frame in enumerate(frames):
        rows = np.flatnonzero(persons.frame == f_idx)
        entry: dict = {"image": frame.image, "keypoints": frame.keypoints, "persons": len(rows)}
        if len(rows) == 0:
            images.append(entry)
            continue
        rows = rows[np.argsort(persons.person[rows], kind="stable")]
        index = torch.as_tensor(rows, device=fitted.joints.device)
        arrays = {k: v[index].cpu().numpy() for k, v in fitted.params.items()}
        arrays.update({
            "focal": inputs.focal[index].cpu().numpy(),
            "center": inputs.center[index].cpu().numpy(),
            "image_size": np.array([frame.height, frame.width]),
            "person_index": persons.person[rows],
            "keypoints": persons.keypoints[rows][:, keep],
            "joints": fitted.joints[index].cpu().numpy(),
            "reprojection_error_px": px[rows],
            "reprojection_loss": data[rows],
            "part": np.array(req.part.value),
            "body_model": np.array(model.kind),
            "prior": np.array(req.prior),
        })
        path = out / f"{frame.stem}.npz"
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)
        npz_files.append(path)
        per_person = [{"person": int(p), "reprojection_error_px": float(e), "loss": float(lo)}
                      for p, e, lo in zip(arrays["person_index"], px[rows], data[rows], strict=True)]
        entry.update({"npz": path, "reprojection_error_px": float(px[rows].mean()),
                      "loss": float(data[rows].mean()), "per_person": per_person})
        if req.overlay and frame.sequence < 0:  # videos: overlay.mp4 (`_write_motions`)
            entry["overlay"], entry["views"] = _overlay(req, out, frame, model, fitted, inputs, index,
                                                        arrays["keypoints"], per_person)
            overlays.append(entry["overlay"])
            views.append(entry["views"])
        images.append(entry)
    outputs: dict[str, Path | list[Path]] = {"npz": npz_files}
    if overlays:
        outputs["overlays"] = overlays
        outputs["views"] = views
    return outputs, images


def _overlay(req: FitImageRequest, out: Path, frame: Frame, model: BodyModel, fitted: FitResult,
             inputs: FitInput, rows: torch.Tensor, keypoints: np.ndarray, per_person: list[dict]
             ) -> tuple[Path, Path]:
    """`<stem>_overlay.png`: meshes over the photo (camera coordinates = model output: the camera rotation is
    the identity), the keypoints (dots) and the model joints projected (rings), each pair joined by a line;
    `<stem>_fit.png`: that over the bodies seen from above (depth errors show there), with a legend and
    the reprojection error and depth of each person."""
    image = read_image(frame.image)
    with torch.no_grad():
        posed = body_vertices(model, {k: v[rows] for k, v in fitted.params.items()})
    focal = float(inputs.focal[rows[0]])
    center = tuple(float(c) for c in inputs.center[rows[0]])
    verts = posed.vertices.cpu().numpy() if posed.vertices is not None and model.faces is not None else None
    if verts is not None:
        image = overlay_mesh(image, list(verts), model.faces.cpu().numpy(), focal=focal, center=center,
                             alpha=0.7, renderer=req.renderer)
    joints = posed.joints[:, fitted.layout.model_idx].cpu().numpy()  # (P, K, 3), one per kept keypoint
    projected = joints[..., :2] / joints[..., 2:] * focal + np.asarray(center)
    seen = keypoints[..., 2] >= req.conf_threshold
    colors = [_dark(PERSON_COLORS[i % len(PERSON_COLORS)]) for i in range(len(keypoints))]
    for p, color in enumerate(colors):
        image = draw_segments(image, keypoints[p, seen[p], :2], projected[p, seen[p]], color=(255, 255, 255))
        image = draw_keypoints(image, keypoints[p], edges=fitted.layout.edges, conf_threshold=req.conf_threshold,
                               color=color)
        rings = np.concatenate([projected[p], seen[p, :, None].astype(np.float64)], axis=-1)
        image = draw_keypoints(image, rings, conf_threshold=0.5, color=color, marker="ring")
    overlay = save_image(out / f"{frame.stem}_overlay.png", image)

    h, w = image.shape[:2]
    depth = fitted.joints[rows, 0, 2].cpu().numpy()  # the root joint (pelvis / wrist)
    names = [f"{entry['person']}: {d:.2f} m" for entry, d in zip(per_person, depth, strict=True)]
    panels = [image]
    if verts is not None:  # under the photo, as wide: people keep (about) their left-right place
        panels.append(overhead_view(list(verts), model.faces.cpu().numpy(), size=(w, max(96, round(0.45 * h))),
                                    labels=names, half_fov=w / 2 / focal, renderer=req.renderer))
    picture = np.concatenate(panels, axis=0)
    entries = [("dot", (90, 90, 90), "keypoints (input)"), ("ring", (90, 90, 90), "model joints (projected)")]
    entries += [("square", PERSON_COLORS[i % len(PERSON_COLORS)],
                 f"person {e['person']}: {e['reprojection_error_px']:.1f} px, depth {d:.2f} m")
                for i, (e, d) in enumerate(zip(per_person, depth, strict=True))]
    band = legend(entries, width=picture.shape[1], px=max(13, min(24, picture.shape[1] // 55)))
    views = save_image(out / f"{frame.stem}_fit.png", np.concatenate([picture, band], axis=0))
    return overlay, views


def _dark(color: tuple[float, float, float]) -> tuple[int, int, int]:
    """A person's keypoint colour: the mesh colour (sRGB 0-1), darker."""
    r, g, b = (int(round(255 * 0.55 * c)) for c in color)
    return r, g, b


# ---------------------------------------------------------------- detection (images without keypoint files)
def _check_length(req: FitImageRequest, frames: list[Frame]) -> None:
    """Videos are fitted in one batch: refuse more than MAX_VIDEO_FRAMES frames unless --max-frames asks."""
    if req.max_frames is None and len(frames) > MAX_VIDEO_FRAMES:
        raise InputError(f"{frames[0].image if frames[0].video_frame >= 0 else frames[0].image.parent}: "
                         f"{len(frames)} frames; fit-image fits at most {MAX_VIDEO_FRAMES} video frames at once "
                         "(one batch, one body shape)",
                         hint="pass --max-frames N to fit the first N frames (more takes longer and more "
                              "memory), or cut the video")


def _no_keypoints(frame: Frame) -> str:
    if frame.video_frame >= 0:
        return f"no keypoints for frame {frame.video_frame} of {frame.image}"
    return f"no keypoints for {frame.image} (looked for {', '.join(map(str, frame.searched))})"


def _keypoint_file(req: FitImageRequest, out: Path, frame: Frame, detected: int, sequences: int) -> Path:
    """Where a detection is saved: --save-keypoints (a .json for one image, else a folder), else out/
    (`<stem>.keypoints.json` for images, `keypoints/<frame>.json` for videos: `--keypoints` reads it back)."""
    name = (frame.stem if frame.video_frame >= 0 else frame.image.stem) + ".json"
    target = req.save_keypoints
    if frame.sequence < 0:
        if target is None:
            return out / f"{frame.stem}.keypoints.json"
        if target.suffix.lower() == ".json":
            if detected > 1:
                raise InputError(f"--save-keypoints {target} names one file, but keypoints are detected for "
                                 f"{detected} images", hint="give a folder")
            return target
        return target / name
    folder = target if target is not None else out / "keypoints"
    if sequences > 1:  # one folder per video
        folder = folder / (frame.image.stem if frame.video_frame >= 0 else frame.image.parent.name)
    return folder / name


def _frame_images(frames: list[Frame]) -> Iterator[tuple[Frame, np.ndarray]]:
    """The pictures of `frames`: files read, video files decoded once each (in frame order)."""
    videos: dict[Path, dict[int, Frame]] = {}
    for frame in frames:
        if frame.video_frame >= 0:
            videos.setdefault(frame.image, {})[frame.video_frame] = frame
        else:
            yield frame, read_image(frame.image)
    for path, wanted in videos.items():
        for index, image in enumerate(read_video_frames(path, stop=max(wanted) + 1)):
            if index in wanted:
                yield wanted[index], image


def _detect_missing(req: FitImageRequest, out: Path, frames: list[Frame]) -> list[Path]:
    """Detect the keypoints of frames that have none (`io.detect`: MediaPipe, the most prominent person),
    save them as COCO-WholeBody JSON and point the frames at the files, which are then read like any other."""
    missing = [f for f in frames if f.keypoints is None]
    if not missing:
        return []
    if req.part is Part.hand:
        raise InputError(f"{_no_keypoints(missing[0])}; detection finds whole-body keypoints, not hand crops",
                         hint="pass --keypoints (MMPose hand JSON), or fit the whole body with --part wholebody")
    sequences = len({f.sequence for f in frames})
    written: list[Path] = []
    for frame, image in _frame_images(missing):
        try:
            found = detect_keypoints(image, path=frame.image)
        except UnavailableError as exc:  # the detect extra is missing: say both ways out, on one line
            raise InputError(f"{_no_keypoints(frame)}, and {exc.message}", hint=DETECT_HINT) from None
        except InputError:
            if frame.sequence < 0:
                raise InputError(f"{_no_keypoints(frame)}, and MediaPipe found no person in it",
                                 hint="pass --keypoints from another detector") from None
            # a video frame without a person: an empty file, and read_persons skips the frame
            found = Keypoints2D(np.zeros((0, 135, 3), np.float32), "openpose135", DETECTOR, None, frame.image)
        path = _keypoint_file(req, out, frame, len(missing), sequences)
        frame.keypoints = write_coco_wholebody(path, found, image_size=image.shape[:2])
        written.append(frame.keypoints)
    log.info("detected keypoints in %d image(s) with MediaPipe", len(written))
    return written


# ---------------------------------------------------------------- videos: motion prior pass, motion.npz, overlay.mp4
@dataclass
class _Motion:
    """One person along one video: rows of the batch in frame order and the final parameters."""

    name: str  # file stem: motion, motion_person1, <video>_motion, ...
    sequence: int
    rows: np.ndarray  # (T,) batch rows in frame order
    params: dict[str, torch.Tensor]  # (T, ...) after the motion prior pass (betas: one shape, every row)
    joints: torch.Tensor  # (T, J, 3) camera coordinates
    joints_fit: torch.Tensor  # (T, J, 3) of the per-frame fits
    fps: float
    smoothed: bool  # the motion prior pass ran
    schedule: str = ""
    reprojection_px: float = float("nan")  # mean over the frames, after the pass


class _ShapedBody:
    """`model` with one fixed shape, for `tasks.denoise_motion` (which poses the body without betas)."""

    def __init__(self, model: BodyModel, betas: torch.Tensor) -> None:
        self.model, self.betas = model, betas
        self.kind, self.joint_names, self.faces = model.kind, model.joint_names, model.faces
        self.parents, self.num_betas = model.parents, model.num_betas

    def __call__(self, *, return_vertices: bool = True, **params: torch.Tensor | None) -> BodyOutput:
        rows = next(v.shape[:-1] for v in params.values() if v is not None)
        return self.model(**params, betas=self.betas.expand(*rows, self.betas.shape[-1]),
                          return_vertices=return_vertices)

    def joint_set(self, name: str) -> torch.Tensor:
        return self.model.joint_set(name)

    def to(self, device: "str | torch.device") -> "_ShapedBody":
        return self


def jitter_mm(joints: torch.Tensor) -> float:
    """Mean joint acceleration ‖J[t+1] − 2·J[t] + J[t−1]‖ over frames and joints, mm per frame²."""
    if len(joints) < 3:
        return float("nan")
    return float((joints[2:] - 2 * joints[1:-1] + joints[:-2]).norm(dim=-1).mean() * 1000)


def motion_schedule(joints: torch.Tensor) -> MotionSchedule:
    """The motion prior pass's recipe for per-frame fits: the denoising schedule of their noise level (white
    noise of std σ per coordinate has E‖J₊ − 2J + J₋‖ ≈ 3.9 σ), with one more outer iteration (temporal weight
    40, data 10): monocular fits jitter mostly in depth, far more than the benchmark noise. On the Gestures
    test clip (24 frames, PA-MPJPE 45 mm) the three official iterations take the jitter from 312 to 133
    mm/frame², four to 33 (truth 10) at the same PA-MPJPE (51 mm), five to 27 at 54 mm."""
    base = pick_schedule(jitter_mm(joints) / 1000 / 3.9)
    return MotionSchedule(base.name, base.iterations + 1, base.steps_per_iter)


def _motion_body_prior(req: FitImageRequest, prior: PosePrior, device: torch.device) -> DPoserPrior | None:
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


def _motions(req: FitImageRequest, model: BodyModel, prior: PosePrior, fitted: FitResult, inputs: FitInput,
             persons: FramePersons, frames: list[Frame], device: torch.device,
             progress: Callable[[int, int], None] | None) -> list[_Motion]:
    """Per person along each video: the per-frame fits, then the motion prior pass (`tasks.denoise_motion` on
    the fitted joints, with one body shape and the schedule of the jitter's noise level)."""
    body_prior = _motion_body_prior(req, prior, device)
    generator = make_generator(req.seed, device)
    tracks = np.unique(persons.track)
    names = _motion_names(persons, frames, tracks)
    motions = []
    for track, name in zip(tracks, names, strict=True):
        rows = np.flatnonzero(persons.track == track)
        rows = rows[np.argsort(persons.frame[rows], kind="stable")]
        index = torch.as_tensor(rows, device=device)
        params = {k: v[index] for k, v in fitted.params.items()}
        params["betas"] = params["betas"][:1].expand_as(params["betas"])  # one shape along the video
        first = frames[int(persons.frame[rows[0]])]
        motion = _Motion(name, first.sequence, rows, params, fitted.joints[index], fitted.joints[index],
                         first.fps or 30.0, False)
        if body_prior is not None and len(rows) >= 3:
            res = denoise_motion(body_prior, _ShapedBody(model, params["betas"][:1]), motion.joints_fit,
                                 world=True, schedule=motion_schedule(motion.joints_fit), temporal="joints",
                                 generator=generator, progress=progress)
            motion.params = {**params, **{k: v.detach() for k, v in res.params.items()}}
            motion.joints, motion.smoothed, motion.schedule = res.joints.detach(), True, res.schedule.name
            motion.reprojection_px = _reprojection_px(model, motion.params, fitted, inputs, index, req.part)
        motions.append(motion)
    return motions


def _reprojection_px(model: BodyModel, params: dict[str, torch.Tensor], fitted: FitResult, inputs: FitInput,
                     rows: torch.Tensor, part: Part) -> float:
    """Mean pixel distance of the model's projected joints to the keypoints the fit used (as the fit's own
    `reprojection_px`: confident keypoints, not the ones the part ignores)."""
    with torch.no_grad():
        joints = model(**params, return_vertices=False).joints[:, fitted.layout.model_idx]
    proj = cam.perspective_project(joints, inputs.focal[rows], inputs.center[rows])
    kp = inputs.keypoints[rows][:, fitted.layout.kp_keep.to(rows.device)]
    used = kp[..., 2] > 0
    used[:, list(FIT_SPECS[part].ignored)] = False
    return float(((proj - kp[..., :2]).norm(dim=-1) * used).sum() / used.sum().clamp(min=1))


def _video_prefix(frames: list[Frame], sequence: int) -> str:
    """"" for one video, else "<video or folder name>_" (file names of several videos stay apart)."""
    if len({f.sequence for f in frames}) == 1:
        return ""
    frame = next(f for f in frames if f.sequence == sequence)
    return (frame.image.stem if frame.video_frame >= 0 else frame.image.parent.name) + "_"


def _frame_numbers(frames: list[Frame]) -> np.ndarray:
    """Each frame's number in its video: the decoded frame index, or the position in its folder."""
    seen: dict[int, int] = {}
    numbers = []
    for f in frames:
        seen[f.sequence] = seen.get(f.sequence, -1) + 1
        numbers.append(f.video_frame if f.video_frame >= 0 else seen[f.sequence])
    return np.array(numbers, dtype=np.int64)


def _motion_names(persons: FramePersons, frames: list[Frame], tracks: np.ndarray) -> list[str]:
    names = []
    for track in tracks:
        row = int(np.flatnonzero(persons.track == track)[0])
        seq = frames[int(persons.frame[row])].sequence
        people = {int(p) for p, f in zip(persons.person, persons.frame, strict=True) if frames[int(f)].sequence == seq}
        names.append(f"{_video_prefix(frames, seq)}motion"
                     + (f"_person{int(persons.person[row])}" if len(people) > 1 else ""))
    return names


def _motion_metrics(motions: list[_Motion], lines: list[str]) -> dict[str, float]:
    """Jitter (mean joint acceleration) of the per-frame fits and of the written motion, frame-weighted."""
    weights = np.array([len(m.rows) for m in motions], dtype=np.float64)
    before = np.array([jitter_mm(m.joints_fit) for m in motions])
    after = np.array([jitter_mm(m.joints) for m in motions])
    ok = np.isfinite(before)
    if not ok.any():
        return {}
    b = float(np.average(before[ok], weights=weights[ok]))
    a = float(np.average(after[ok], weights=weights[ok]))
    out = {"jitter_before_mm": b, "jitter_after_mm": a}
    smoothed = [m for m in motions if m.smoothed]
    if smoothed:
        out["motion_reprojection_error_px"] = float(np.average([m.reprojection_px for m in smoothed],
                                                               weights=[len(m.rows) for m in smoothed]))
    lines.append(f"jitter (mean joint acceleration): {b:.1f} mm/frame² per-frame fits"
                 + (f" → {a:.1f} mm/frame² after the motion prior pass (reprojection error "
                    f"{out['motion_reprojection_error_px']:.1f} px)" if smoothed else " (no motion prior pass)"))
    return out


def _motion_arrays(m: _Motion, model: BodyModel, frames: list[Frame], persons: FramePersons,
                   inputs: FitInput) -> dict[str, np.ndarray]:
    """motion.npz: AMASS-style keys (poses (T, 165) SMPL-X order, trans, betas, mocap_frame_rate, gender) and
    ours (the fitted parameters, joints before/after the motion pass, frame_index, camera)."""
    p = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in m.params.items()}
    t = len(m.rows)
    arrays: dict[str, np.ndarray] = {k: v for k, v in p.items() if k != "betas"}
    if "body_pose" in p:
        zeros = np.zeros((t, 3), np.float32)
        arrays["poses"] = np.concatenate(
            [p["global_orient"], p["body_pose"], p.get("jaw_pose", zeros), np.zeros((t, 6), np.float32),
             p.get("left_hand_pose", np.zeros((t, 45), np.float32)),
             p.get("right_hand_pose", np.zeros((t, 45), np.float32))], axis=1)
        arrays["trans"] = p["transl"]
    index = torch.as_tensor(m.rows, device=inputs.focal.device)
    arrays.update(
        betas=p["betas"][0], mocap_frame_rate=np.array(m.fps), fps=np.array(m.fps), gender=np.array("neutral"),
        surface_model_type=np.array(model.kind), joints=m.joints.cpu().numpy(),
        joints_per_frame_fit=m.joints_fit.cpu().numpy(),
        frame_index=_frame_numbers(frames)[persons.frame[m.rows]],
        person_index=persons.person[m.rows], focal=inputs.focal[index].cpu().numpy(),
        center=inputs.center[index].cpu().numpy(), image_size=inputs.image_size[index].cpu().numpy(),
        coordinates=np.array("camera: x right, y down, z forward, metres"),
        motion_prior=np.array(m.smoothed),
    )
    return arrays


def _write_motions(req: FitImageRequest, out: Path, frames: list[Frame], persons: FramePersons,
                   inputs: FitInput, model: BodyModel, fitted: FitResult, motions: list[_Motion]
                   ) -> dict[str, Path | list[Path]]:
    """motion.npz per person and video; overlay.mp4 per video (the final fit over the frames)."""
    files = [write_motion(out / f"{m.name}.npz", **_motion_arrays(m, model, frames, persons, inputs))
             for m in motions]
    outputs: dict[str, Path | list[Path]] = {"motion": files}
    if req.overlay:
        params = {k: v.clone() for k, v in fitted.params.items()}
        for m in motions:  # the written motion replaces the per-frame fits
            index = torch.as_tensor(m.rows, device=inputs.focal.device)
            for k, v in m.params.items():
                params[k][index] = v.to(params[k])
        videos = []
        for seq in sorted({f.sequence for f in frames}):
            video = _overlay_video(req, out / f"{_video_prefix(frames, seq)}overlay.mp4", frames, seq, persons,
                                   inputs, model, fitted, params)
            if video is not None:
                videos.append(video)
        if videos:
            outputs["overlay_video"] = videos
    return outputs


def _overlay_video(req: FitImageRequest, path: Path, frames: list[Frame], sequence: int, persons: FramePersons,
                   inputs: FitInput, model: BodyModel, fitted: FitResult, params: dict[str, torch.Tensor]
                   ) -> Path | None:
    """The fitted bodies and keypoints over every frame of one video, downsampled to OVERLAY_VIDEO_SIDE."""
    chosen = [f for f in frames if f.sequence == sequence]
    step = max(1, -(-max(chosen[0].height, chosen[0].width) // OVERLAY_VIDEO_SIDE))  # integer factor
    keep = fitted.layout.kp_keep.cpu().numpy()
    faces = model.faces.cpu().numpy() if model.faces is not None else None
    position = {id(f): i for i, f in enumerate(frames)}
    pictures = []
    try:
        for frame, image in _frame_images(chosen):
            image = np.ascontiguousarray(image[::step, ::step])
            rows = np.flatnonzero(persons.frame == position[id(frame)])
            if len(rows):
                index = torch.as_tensor(rows, device=inputs.focal.device)
                with torch.no_grad():
                    posed = body_vertices(model, {k: v[index] for k, v in params.items()},
                                          vertices=faces is not None)
                cx, cy = (float(c) / step for c in inputs.center[index[0]])
                if posed.vertices is not None and faces is not None:
                    image = overlay_mesh(image, list(posed.vertices.cpu().numpy()), faces,
                                         focal=float(inputs.focal[index[0]]) / step, center=(cx, cy), alpha=0.7,
                                         renderer=req.renderer)
                kp = persons.keypoints[rows][:, keep].copy()
                kp[..., :2] /= step
                image = draw_keypoints(image, kp, edges=fitted.layout.edges, conf_threshold=req.conf_threshold)
            pictures.append(image)
        return save_video(path, np.stack(pictures), fps=chosen[0].fps or 30.0)
    except (UnavailableError, MissingAssetError) as exc:
        log.warning("no overlay video: %s", exc.message)
        return None


# ---------------------------------------------------------------- --export
def _export(req: FitImageRequest, out: Path, formats: tuple[str, ...], frames: list[Frame], persons: FramePersons,
            model: BodyModel, fitted: FitResult, motions: list[_Motion]) -> dict[str, Path | list[Path]]:
    """Images: `<stem>.<fmt>` per image (BVH: one per person); videos: `motion.<fmt>` per person and video.
    Upright (y up, as viewers expect; the fits are in camera coordinates, y down)."""
    written: dict[str, list[Path]] = {f"export_{fmt}": [] for fmt in formats}
    jobs: list[tuple[str, dict[str, torch.Tensor], float]] = [(m.name, m.params, m.fps) for m in motions]
    for f_idx, frame in enumerate(frames):
        rows = np.flatnonzero(persons.frame == f_idx)
        if frame.sequence >= 0 or not len(rows):
            continue
        rows = rows[np.argsort(persons.person[rows], kind="stable")]
        index = torch.as_tensor(rows, device=fitted.joints.device)
        jobs.append((frame.stem, {k: v[index] for k, v in fitted.params.items()}, 0.0))
    for name, params, fps in jobs:
        chosen, people = list(formats), len(params["transl"])
        if fps == 0.0 and "bvh" in formats and people > 1:  # a BVH holds one skeleton: a file per person
            chosen.remove("bvh")
            for p in range(people):
                motion = skeleton_motion(model, {k: v[p:p + 1] for k, v in params.items()}, upright=True)
                written["export_bvh"].append(write_bvh(out / f"{name}_person{p}.bvh", *motion.bvh_args()))
        for fmt, data in export_data(model, params, chosen, fps=fps or 30.0, upright=True, name=name).items():
            if isinstance(data, SkeletonMotion):
                written["export_bvh"].append(write_bvh(out / f"{name}.bvh", *data.bvh_args()))
            else:
                written[f"export_{fmt}"] += write_meshes(out / name, data.vertices, data.faces, fmt)
    return dict(written)
