"""The files of `dposer fit-image` (`services.fit_image`): per image `<stem>.npz` and its pictures, per video
`motion.npz` per person and `overlay.mp4`, and the `--export` meshes / BVH files."""

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from dposer_cli.bodies import BodyModel
from dposer_cli.core.errors import MissingAssetError, UnavailableError
from dposer_cli.core.paths import atomic_write
from dposer_cli.io.export import write_bvh, write_meshes
from dposer_cli.io.frames import Frame, FramePersons, VideoTrack, frame_images, video_prefix
from dposer_cli.io.media import read_image, save_image, save_video
from dposer_cli.io.motion import write_motion
from dposer_cli.render.threads import map_each, picture_workers, windows
from dposer_cli.tasks.export import SkeletonMotion, export_data, skeleton_motion
from dposer_cli.tasks.fit import FitInput, FitResult
from dposer_cli.tasks.fit_motion import TrackMotion, merged_params, motion_arrays
from dposer_cli.tasks.pictures import fit_pictures, fit_video_frame, frame_bodies

log = logging.getLogger(__name__)

OVERLAY_VIDEO_SIDE = 640  # overlay.mp4 frames are downsampled (by an integer factor) to at most this side
VIDEO_WINDOW = 8  # overlay.mp4: frames decoded at a time per drawing thread


def write_images(
    out: Path,
    frames: list[Frame],
    persons: FramePersons,
    inputs: FitInput,
    model: BodyModel,
    fitted: FitResult,
    *,
    labels: dict[str, str],
    overlay: bool,
    renderer: str,
    conf_threshold: float,
) -> tuple[dict[str, Path | list[Path]], list[dict]]:
    """`<stem>.npz` (the fitted persons, sorted by person index, and the `labels` as strings) per image that
    has fitted persons, with `<stem>_overlay.png` and `<stem>_fit.png` for single images (`overlay`); the
    outputs and the per-image summary entries."""
    keep = fitted.layout.kp_keep.cpu().numpy()
    px, data = fitted.reprojection_px.cpu().numpy(), fitted.data_loss.cpu().numpy()
    images: list[dict] = []
    pictures: list[tuple[dict, Frame, torch.Tensor, np.ndarray, list[dict]]] = []  # drawn after the loop
    for f_idx, frame in enumerate(frames):
        rows = np.flatnonzero(persons.frame == f_idx)
        entry: dict = {"image": frame.image, "keypoints": frame.keypoints, "persons": len(rows)}
        images.append(entry)
        if len(rows) == 0:
            continue
        rows = rows[np.argsort(persons.person[rows], kind="stable")]
        index = torch.as_tensor(rows, device=fitted.joints.device)
        arrays = {k: v[index].cpu().numpy() for k, v in fitted.params.items()}
        arrays.update(
            focal=inputs.focal[index].cpu().numpy(),
            center=inputs.center[index].cpu().numpy(),
            image_size=np.array([frame.height, frame.width]),
            person_index=persons.person[rows],
            keypoints=persons.keypoints[rows][:, keep],
            joints=fitted.joints[index].cpu().numpy(),
            reprojection_error_px=px[rows],
            reprojection_loss=data[rows],
            part=np.array(labels["part"]),
            body_model=np.array(model.kind),
            prior=np.array(labels["prior"]),
        )
        path = out / f"{frame.stem}.npz"
        with atomic_write(path, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
        per_person = [
            {"person": int(p), "reprojection_error_px": float(e), "loss": float(lo)}
            for p, e, lo in zip(arrays["person_index"], px[rows], data[rows], strict=True)
        ]
        entry.update(
            {
                "npz": path,
                "reprojection_error_px": float(px[rows].mean()),
                "loss": float(data[rows].mean()),
                "per_person": per_person,
            }
        )
        if overlay and frame.sequence < 0:  # videos: overlay.mp4 (`write_video`)
            pictures.append((entry, frame, index, arrays["keypoints"], per_person))

    lock = threading.Lock()  # the body model (its caches and recordings) poses one call at a time

    def draw_photo(job: tuple[dict, Frame, torch.Tensor, np.ndarray, list[dict]]) -> None:
        entry, frame, index, keypoints, per_person = job
        with lock:
            posed = frame_bodies(model, fitted.params, inputs, index)
        photo, views = fit_pictures(
            read_image(frame.image),
            model,
            fitted,
            inputs,
            index,
            keypoints,
            per_person,
            renderer=renderer,
            conf_threshold=conf_threshold,
            posed=posed,
            workers=inner,
        )
        saves = [(out / f"{frame.stem}_overlay.png", photo), (out / f"{frame.stem}_fit.png", views)]
        # the two PNGs encoded side by side too (zlib releases the GIL)
        entry["overlay"], entry["views"] = map_each(lambda job: save_image(*job), saves, workers=inner)

    outer = picture_workers(len(pictures), renderer)
    inner = picture_workers(2, renderer) if outer == 1 else 1  # one photo's renders and PNGs: no nested pools
    map_each(draw_photo, pictures, workers=outer)
    outputs: dict[str, Path | list[Path]] = {"npz": [e["npz"] for e in images if "npz" in e]}
    if any("overlay" in e for e in images):
        outputs["overlays"] = [e["overlay"] for e in images if "overlay" in e]
        outputs["views"] = [e["views"] for e in images if "views" in e]
    return outputs, images


def write_video(
    out: Path,
    frames: list[Frame],
    persons: FramePersons,
    inputs: FitInput,
    model: BodyModel,
    fitted: FitResult,
    tracks: list[VideoTrack],
    motions: list[TrackMotion],
    *,
    overlay: bool,
    renderer: str,
    conf_threshold: float,
) -> dict[str, Path | list[Path]]:
    """motion.npz per person and video; overlay.mp4 per video (the written motions over the frames,
    downsampled to OVERLAY_VIDEO_SIDE), skipped with a warning when no renderer works."""
    outputs: dict[str, Path | list[Path]] = {
        "motion": [
            write_motion(
                out / f"{t.name}.npz",
                **motion_arrays(
                    m,
                    fps=t.fps,
                    model_kind=model.kind,
                    inputs=inputs,
                    frame_index=t.frame_index,
                    person_index=t.person_index,
                ),
            )
            for t, m in zip(tracks, motions, strict=True)
        ]
    }
    if not overlay:
        return outputs
    params, keep = merged_params(fitted, motions), fitted.layout.kp_keep.cpu().numpy()
    position = {id(f): i for i, f in enumerate(frames)}
    lock = threading.Lock()  # the body model (its caches and recordings) poses one frame at a time

    def draw(job: tuple[Frame, np.ndarray, int]) -> np.ndarray:
        frame, image, step = job
        rows = np.flatnonzero(persons.frame == position[id(frame)])
        with lock:
            posed = frame_bodies(model, params, inputs, rows)
        return fit_video_frame(
            image,
            model,
            params,
            inputs,
            rows,
            persons.keypoints[rows][:, keep],
            fitted.layout.edges,
            step=step,
            renderer=renderer,
            conf_threshold=conf_threshold,
            posed=posed,
        )

    videos = []
    for seq in sorted({f.sequence for f in frames}):
        chosen = [f for f in frames if f.sequence == seq]
        step = max(1, -(-max(chosen[0].height, chosen[0].width) // OVERLAY_VIDEO_SIDE))  # integer factor
        workers = picture_workers(len(chosen), renderer)
        try:
            pictures: list[np.ndarray] = []
            # decoded a window at a time (a long video's frames are not all held at once), drawn side by side
            for window in windows(frame_images(chosen), VIDEO_WINDOW * workers):
                jobs = [(frame, image, step) for frame, image in window]
                pictures += map_each(draw, jobs, workers=workers)
            videos.append(
                save_video(
                    out / f"{video_prefix(frames, seq)}overlay.mp4",
                    np.stack(pictures),
                    fps=chosen[0].fps or 30.0,
                )
            )
        except (UnavailableError, MissingAssetError) as exc:
            log.warning("no overlay video: %s", exc.message)
    if videos:
        outputs["overlay_video"] = videos
    return outputs


def write_exports(
    out: Path,
    formats: tuple[str, ...],
    frames: list[Frame],
    persons: FramePersons,
    model: BodyModel,
    fitted: FitResult,
    tracks: list[VideoTrack],
    motions: list[TrackMotion],
) -> dict[str, Path | list[Path]]:
    """--export: images: `<stem>.<fmt>` per image (BVH: one per person); videos: `motion.<fmt>` per person and
    video. Upright (y up, as viewers expect; the fits are in camera coordinates, y down)."""
    written: dict[str, list[Path]] = {f"export_{fmt}": [] for fmt in formats}
    jobs = [(t.name, m.params, t.fps) for t, m in zip(tracks, motions, strict=True)]
    for f_idx, frame in enumerate(frames):
        rows = np.flatnonzero(persons.frame == f_idx)
        if frame.sequence < 0 and len(rows):
            index = torch.as_tensor(
                rows[np.argsort(persons.person[rows], kind="stable")], device=fitted.joints.device
            )
            jobs.append((frame.stem, {k: v[index] for k, v in fitted.params.items()}, 0.0))
    for name, params, fps in jobs:
        chosen, people = list(formats), len(params["transl"])
        if fps == 0.0 and "bvh" in formats and people > 1:  # a BVH holds one skeleton: a file per person
            chosen.remove("bvh")
            for p in range(people):
                motion = skeleton_motion(model, {k: v[p : p + 1] for k, v in params.items()}, upright=True)
                written["export_bvh"].append(write_bvh(out / f"{name}_person{p}.bvh", *motion.bvh_args()))
        for fmt, data in export_data(model, params, chosen, fps=fps or 30.0, upright=True, name=name).items():
            if isinstance(data, SkeletonMotion):
                written["export_bvh"].append(write_bvh(out / f"{name}.bvh", *data.bvh_args()))
            else:
                written[f"export_{fmt}"] += write_meshes(out / name, data.vertices, data.faces, fmt)
    return dict(written)
