"""fit-image on a video the tests make themselves: the official Gestures motion on the default body, seen by a
known camera, rendered to clip.mp4 and projected to keypoint JSONs with pixel noise. The per-frame fits share
one body shape; the motion prior pass must lower the jitter (mean joint acceleration); the recovered motion's
joint error is reported. With MediaPipe (the `detect` extra) the same clip is fitted from its own detections.
Detection without the extra fails with one line that names both ways out.
"""

import builtins
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dposer_cli.bodies import camera as cam
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import demo_checkpoint, shared_data_dir
from dposer_cli.io.detect import DETECT_HINT
from dposer_cli.io.media import read_video_frames, save_image, save_video, video_info
from dposer_cli.io.motion import read_motion
from dposer_cli.metrics import pa_mpjpe
from dposer_cli.services import fit_image as svc
from tests.io.test_export import parse_bvh
from tests.services.test_fit_image import write_blank_image, write_keypoints

torch.set_num_threads(1)

GESTURES = "official/examples/Gestures_3_poses_batch005.npz"
HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mediapipe = pytest.mark.skipif(
    not HAS_MEDIAPIPE, reason='MediaPipe is not installed (the optional extra: pip install "dposer[detect]")'
)
needs_prior = pytest.mark.skipif(
    not demo_checkpoint(Part.body).is_file(),
    reason="no bundled demo body prior (dposer_cli/assets/demo/body.pt)",
)


@dataclass
class Clip:
    video: Path
    keypoints: Path  # folder: one OpenPose JSON per frame
    joints: np.ndarray  # (T, 22, 3) ground-truth body22 joints, camera coordinates
    width: int
    height: int
    focal: float
    fps: float


def make_clip(
    folder: Path,
    *,
    frames: int = 24,
    stride: int = 8,
    width: int = 320,
    height: int = 240,
    noise_px: float = 2.0,
    seed: int = 0,
    fps: float = 15.0,
) -> Clip:
    """Gestures frames 0, stride, 2·stride, … on the default body (upright, turning slowly, drifting sideways),
    rendered over grey and projected (OpenPose-25 + pixel noise)."""
    from dposer_cli.bodies.mannequin import MannequinBody
    from dposer_cli.render.draw import overlay_mesh

    path = shared_data_dir() / GESTURES
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data = np.load(path, allow_pickle=False)
    pose = torch.as_tensor(data["pose_body"][: frames * stride : stride], dtype=torch.float32)
    t = len(pose)
    yaw = torch.linspace(-0.4, 0.4, t)
    orient = cam.compose_axis_angle(
        cam.camera_orient(t), torch.stack([torch.zeros(t), yaw, torch.zeros(t)], 1)
    )
    transl = torch.stack([torch.linspace(-0.25, 0.25, t), torch.full((t,), 0.25), torch.full((t,), 3.4)], 1)
    body = MannequinBody()
    with torch.no_grad():
        out = body(body_pose=pose, global_orient=orient, transl=transl)
    focal = math.hypot(width, height)
    center = (width / 2, height / 2)
    faces = body.faces.numpy()
    grey = np.full((height, width, 3), 200, np.uint8)
    video = np.stack(
        [
            overlay_mesh(grey, v, faces, focal=focal, center=center, alpha=1.0, renderer="soft")
            for v in out.vertices.numpy()
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    clip = save_video(folder / "clip.mp4", video, fps=fps)
    kp_dir = folder / "keypoints"
    kp_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    uv = cam.perspective_project(
        out.joints[:, body.joint_set("openpose25")],
        torch.full((t,), focal),
        torch.tensor([center]).expand(t, 2),
    ).numpy()
    uv = uv + rng.normal(0, noise_px, uv.shape)
    kp = np.concatenate([uv, np.full(uv.shape[:-1] + (1,), 0.9)], -1).astype(np.float32)
    for i in range(t):
        write_keypoints(kp_dir / f"{i:04d}.json", kp[i : i + 1], "openpose")
    info = video_info(clip)  # H.264 pads to multiples of 16; the keypoints stay in the same pixels
    return Clip(
        clip, kp_dir, out.joints[:, body.joint_set("body22")].numpy(), info.width, info.height, focal, fps
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Clip:
    return make_clip(tmp_path_factory.mktemp("clip"))


def _errors_mm(joints: np.ndarray, truth: np.ndarray) -> float:
    return float(pa_mpjpe(torch.as_tensor(joints), torch.as_tensor(truth)).mean() * 1000)


def _check_motion(result, clip: Clip, frames: int) -> dict:
    (motion_file,) = result.outputs["motion"]
    data = dict(np.load(motion_file, allow_pickle=False))
    for key in (
        "poses",
        "trans",
        "betas",
        "mocap_frame_rate",
        "body_pose",
        "global_orient",
        "transl",
        "joints",
        "joints_per_frame_fit",
        "frame_index",
    ):
        assert key in data, key
    assert data["poses"].shape == (frames, 165) and data["trans"].shape == (frames, 3)
    assert float(data["mocap_frame_rate"]) == pytest.approx(clip.fps)
    assert data["frame_index"].tolist() == list(range(frames))
    motion = read_motion(motion_file)  # denoise-motion reads it as an AMASS SMPL-X file
    assert motion.source_format == "amass-smplx" and motion.fps == pytest.approx(clip.fps)
    np.testing.assert_allclose(motion.body_pose, data["body_pose"], atol=1e-6)
    (overlay,) = result.outputs["overlay_video"]
    assert video_info(overlay).frames == frames
    return data


# ---------------------------------------------------------------------------------------------------- keypoint JSONs
@needs_prior
def test_video_from_keypoint_jsons_motion_pass_lowers_jitter(tmp_path, clip):
    req = svc.FitImageRequest(
        images=(clip.video,),
        keypoints=(clip.keypoints,),
        out=tmp_path / "o",
        focal=clip.focal,
        steps=15,
        device="cpu",
        renderer="soft",
        export=("bvh", "glb"),
    )
    result = svc.run(req)
    t = len(clip.joints)
    data = _check_motion(result, clip, t)
    before, after = result.metrics["jitter_before_mm"], result.metrics["jitter_after_mm"]
    error_fit, error = (
        _errors_mm(data["joints_per_frame_fit"], clip.joints),
        _errors_mm(data["joints"], clip.joints),
    )
    truth = float(
        np.linalg.norm(clip.joints[2:] - 2 * clip.joints[1:-1] + clip.joints[:-2], axis=-1).mean() * 1000
    )
    px_fit, px = result.metrics["reprojection_error_px"], result.metrics["motion_reprojection_error_px"]
    print(
        f"jitter mm/frame²: per-frame fits {before:.1f} → motion prior pass {after:.1f} (ground truth {truth:.1f}); "
        f"PA-MPJPE mm: per-frame fits {error_fit:.1f}, motion {error:.1f}; reprojection px {px_fit:.1f} → {px:.1f}"
    )
    assert after < before
    assert px < 10 * max(px_fit, 1.0)  # still on the person in the picture
    assert error < 120, error  # the motion is still the person's (the pass does not drift away)
    assert result.info["motion_prior"] is True and len(result.outputs["npz"]) == t
    # exports: the motion as BVH (22 joints, every frame) and as one GLB with a mesh per frame
    (bvh_file,), (glb,) = result.outputs["export_bvh"], result.outputs["export_glb"]
    bvh = parse_bvh(bvh_file.read_text())
    assert len(bvh["names"]) == 22 and bvh["frames"] == t and bvh["frame_time"] == pytest.approx(1 / clip.fps)
    scene = trimesh.load(glb, process=False)
    assert len(scene.geometry) == t


def test_video_without_motion_prior_reports_jitter_only(tmp_path, clip):
    req = svc.FitImageRequest(
        images=(clip.video,),
        keypoints=(clip.keypoints,),
        out=tmp_path / "o",
        prior="l2",
        focal=clip.focal,
        steps=4,
        device="cpu",
        overlay=False,
        max_frames=6,
    )
    result = svc.run(req)
    assert result.info["motion_prior"] is False and result.info["frames"] == 6
    assert result.metrics["jitter_before_mm"] == result.metrics["jitter_after_mm"]
    (motion_file,) = result.outputs["motion"]
    data = np.load(motion_file)
    np.testing.assert_array_equal(data["joints"], data["joints_per_frame_fit"])
    assert "overlay_video" not in result.outputs


def test_a_frame_folder_is_a_video_too(tmp_path, clip):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(read_video_frames(clip.video, stop=4)):
        save_image(frames / f"{i:04d}.png", image)
        (frames / f"{i:04d}.json").write_bytes((clip.keypoints / f"{i:04d}.json").read_bytes())
    req = svc.FitImageRequest(
        images=(frames,),
        out=tmp_path / "o",
        prior="l2",
        focal=clip.focal,
        steps=3,
        device="cpu",
        renderer="soft",
    )
    result = svc.run(req)
    (motion_file,) = result.outputs["motion"]
    assert np.load(motion_file)["frame_index"].tolist() == [0, 1, 2, 3]
    assert video_info(result.outputs["overlay_video"][0]).frames == 4
    assert "overlays" not in result.outputs  # no per-frame pictures for videos


def test_long_videos_are_refused_unless_max_frames_says(tmp_path, clip, monkeypatch):
    monkeypatch.setattr(svc, "MAX_VIDEO_FRAMES", 5)
    req = svc.FitImageRequest(
        images=(clip.video,),
        keypoints=(clip.keypoints,),
        out=tmp_path / "o",
        prior="l2",
        steps=1,
        device="cpu",
        overlay=False,
    )
    with pytest.raises(InputError, match="24 frames; fit-image fits at most 5") as exc:
        svc.run(req)
    assert "--max-frames" in exc.value.hint
    with pytest.raises(InputError, match="--max-frames must be at least 1"):
        svc.run(svc.FitImageRequest(images=(clip.video,), out=tmp_path / "o", max_frames=0))


def test_video_with_smplx_from_body_model(tmp_path, clip):
    pytest.importorskip("smplx")
    from tests._fixtures.body_models import write_body_models_tree

    models = write_body_models_tree(tmp_path / "models")
    req = svc.FitImageRequest(
        images=(clip.video,),
        keypoints=(clip.keypoints,),
        out=tmp_path / "o",
        prior="l2",
        focal=clip.focal,
        steps=2,
        device="cpu",
        overlay=False,
        max_frames=5,
        body_model=models,
        export=("bvh", "obj"),
    )
    result = svc.run(req)
    data = np.load(result.outputs["motion"][0])
    assert str(data["surface_model_type"]) == "smplx" and data["poses"].shape == (5, 165)
    bvh = parse_bvh(result.outputs["export_bvh"][0].read_text())
    assert len(bvh["names"]) == 22 and bvh["frames"] == 5
    objs = result.outputs["export_obj"]
    assert len(objs) == 5 and all(len(trimesh.load(p, process=False, force="mesh").faces) > 0 for p in objs)


# ---------------------------------------------------------------------------------------------------- detection
@needs_mediapipe
@needs_prior
def test_video_detected_with_mediapipe(tmp_path, clip):
    """The rendered figure is found by MediaPipe in every frame; the fit follows it and the pass smooths it."""
    frames = 12
    req = svc.FitImageRequest(
        images=(clip.video,),
        out=tmp_path / "o",
        focal=clip.focal,
        steps=15,
        device="cpu",
        overlay=False,
        max_frames=frames,
        save_keypoints=tmp_path / "detected",
    )
    result = svc.run(req)
    files = sorted((tmp_path / "detected").glob("*.json"))
    assert len(files) == frames and result.outputs["keypoints"] == files
    data = dict(np.load(result.outputs["motion"][0]))
    before, after = result.metrics["jitter_before_mm"], result.metrics["jitter_after_mm"]
    print(
        f"MediaPipe clip: jitter {before:.1f} → {after:.1f} mm/frame²; PA-MPJPE mm per-frame fits "
        f"{_errors_mm(data['joints_per_frame_fit'], clip.joints[:frames]):.1f}, motion "
        f"{_errors_mm(data['joints'], clip.joints[:frames]):.1f}"
    )
    assert after < before
    assert len(data["frame_index"]) == frames  # a person in every frame
    # the saved detections are ordinary keypoint files: --keypoints reads them back
    again = svc.run(
        svc.FitImageRequest(
            images=(clip.video,),
            keypoints=(tmp_path / "detected",),
            out=tmp_path / "o2",
            prior="l2",
            steps=1,
            device="cpu",
            overlay=False,
            max_frames=frames,
        )
    )
    assert "keypoints" not in again.outputs


@needs_mediapipe
def test_photo_detection_saves_keypoints_and_fits(tmp_path, clip):
    image = next(read_video_frames(clip.video))
    photo = save_image(tmp_path / "photo.png", image)
    result = svc.run(
        svc.FitImageRequest(
            images=(photo,),
            out=tmp_path / "o",
            focal=clip.focal,
            steps=10,
            prior="l2",
            device="cpu",
            overlay=False,
            save_keypoints=tmp_path / "kp.json",
        )
    )
    assert result.outputs["keypoints"] == [tmp_path / "kp.json"]
    assert result.info["images"][0]["keypoints"] == tmp_path / "kp.json"
    assert not (tmp_path / "o" / svc.PENDING_KEYPOINTS).exists()  # moved out of the output folder
    assert any("MediaPipe" in line and "most prominent" in line for line in result.lines)
    data = np.load(result.outputs["npz"][0])
    assert data["keypoints"].shape == (1, 25, 3) and (data["keypoints"][0, :, 2] > 0).sum() >= 15
    assert data["reprojection_error_px"][0] < 15


@needs_mediapipe
def test_a_failed_run_leaves_no_saved_keypoints(tmp_path, clip):
    """--save-keypoints outside the output folder is written only when the run succeeds (here the --init
    file is refused after the detection)."""
    photo = save_image(tmp_path / "photo.png", next(read_video_frames(clip.video)))
    np.savez(tmp_path / "init.npz", body_pose=np.full((1, 63), 1e30, np.float32))
    req = svc.FitImageRequest(
        images=(photo,),
        out=tmp_path / "o",
        init=(tmp_path / "init.npz",),
        steps=1,
        prior="l2",
        device="cpu",
        overlay=False,
        save_keypoints=tmp_path / "kp",
    )
    with pytest.raises(InputError, match="values as large as 1e"):
        svc.run(req)
    assert not (tmp_path / "kp").exists()


def test_blank_photo_without_keypoints_is_one_clear_error(tmp_path):
    photo = write_blank_image(tmp_path / "blank.png", 200, 150)
    with pytest.raises(InputError, match="no keypoints for .*blank.png") as exc:
        svc.run(svc.FitImageRequest(images=(photo,), out=tmp_path / "o", steps=1, prior="none", device="cpu"))
    assert "MediaPipe" in exc.value.message
    with pytest.raises(InputError, match="not hand crops"):
        svc.run(
            svc.FitImageRequest(
                images=(photo,), out=tmp_path / "o", part=Part.hand, steps=1, prior="none", device="cpu"
            )
        )


def test_without_the_detect_extra_detection_says_install_it_or_pass_keypoints(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_mediapipe(name, *args, **kwargs):
        if name == "mediapipe" or name.startswith("mediapipe."):
            raise ImportError(f"No module named {name!r}", name="mediapipe")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mediapipe)
    photo = write_blank_image(tmp_path / "photo.png", 200, 150)
    with pytest.raises(InputError) as exc:
        svc.run(svc.FitImageRequest(images=(photo,), out=tmp_path / "o", steps=1, prior="none", device="cpu"))
    assert exc.value.message.startswith(f"no keypoints for {photo}")
    assert "MediaPipe, which is not installed" in exc.value.message and "\n" not in exc.value.message
    assert exc.value.hint == DETECT_HINT and "--keypoints" in DETECT_HINT
    assert not (tmp_path / "o" / "photo.keypoints.json").exists()


def test_a_frame_without_persons_is_skipped_with_a_warning_naming_its_file(tmp_path, caplog):
    """A frame of a sequence whose keypoint file holds nobody is skipped; the warning names the file, not the
    folder it sits in (detections wait in the run's staging folder, `.out.partial-PID/`)."""
    from dposer_cli.io.frames import Frame, read_persons
    from tests.services.test_fit_image import (
        reference_poses,
        synthetic_scene,
        write_blank_image,
        write_keypoints,
    )

    scene = synthetic_scene(reference_poses()[[3]], width=320, height=240)
    folder = tmp_path / ".out.partial-123" / "keypoints"
    folder.mkdir(parents=True)
    frames = []
    for name in ("a", "b"):
        image = write_blank_image(tmp_path / f"{name}.png", 320, 240)
        if name == "a":
            kp = write_keypoints(folder / "a.json", scene.keypoints, "openpose")
        else:
            kp = folder / "b.json"
            kp.write_text('{"people": []}')
        frames.append(Frame(image=image, keypoints=kp, stem=name, sequence=0))
    persons = read_persons(frames)
    assert persons.frame.tolist() == [0]
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert line.startswith("frame b.png skipped: b.json: no persons found") and ".partial" not in line
