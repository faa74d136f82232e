"""`dposer fit-image`: body, hand and whole-body mesh recovery from 2D keypoints (spec §7.6–§7.8).

A file-in/file-out shell around `tasks.fit.fit`: pair images with keypoint files and read the persons
(`io.frames`), load the body model and the prior, fit every person of every image (or every frame of a
folder) in one batch, and write per image `<stem>.npz` (parameters per person) and `<stem>_overlay.png`
(mesh and keypoints over the photo).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dposer_cli.bodies import BodyModel, load_body
from dposer_cli.bodies import camera as cam
from dposer_cli.core.device import make_generator, resolve_device
from dposer_cli.core.errors import DposerError, InputError, suggest
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import atomic_write, ensure_out_dir
from dposer_cli.core.result import Result
from dposer_cli.engine.optimize import PosePrior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.priors import build_prior, check_prior
from dposer_cli.io.frames import Frame, FramePersons, parse_person, read_init, read_persons, resolve_frames
from dposer_cli.io.keypoints import KEYPOINT_FORMATS
from dposer_cli.io.media import read_image, save_image
from dposer_cli.render.draw import (
    draw_keypoints,
    draw_segments,
    legend,
    overhead_view,
    overlay_mesh,
)
from dposer_cli.render.scene import PERSON_COLORS
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
    frames = resolve_frames(req.images, req.keypoints)
    video = frames[0].sequence >= 0
    if req.temporal and not video:
        raise InputError("--temporal needs a folder of frames (a video), not single images")
    device = resolve_device(req.device)
    out = ensure_out_dir(req.out)
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
    return Result(
        command="fit-image",
        outputs=outputs,
        metrics={"reprojection_error_px": float(px.mean()),
                 "reprojection_loss": float(fitted.data_loss.mean()),
                 "fits_per_second": n / max(fit_seconds, 1e-9)},
        info={"part": req.part.value, "prior": req.prior, "checkpoint": source, "body_model": model.kind,
              "persons": n, "frames": len(frames), "steps": req.steps, "nfe": fitted.nfe,
              "fit_seconds": round(fit_seconds, 4), "prior_seconds": round(fitted.prior_seconds, 4),
              "device": str(device), "seed": req.seed, "stage_losses": fitted.stage_losses, "images": images},
        seconds=time.perf_counter() - t0,
        lines=[(f"fitted {n} {'hand' if req.part is Part.hand else 'person'}(s) in {len(frames)} image(s) "
                f"with {req.prior} prior in {fit_seconds:.1f} s ({fitted.nfe} network evaluations); mean "
                f"reprojection error {float(px.mean()):.1f} px")],
    )


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
        if req.overlay:
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
