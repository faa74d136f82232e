"""fit-image on synthetic ground truth: real poses → the default body → a known camera → keypoint files in
every supported format (pixel noise, dropped points) → fit → PA-MPJPE of the recovered 3D joints.

`synthetic_scene` and the writers are also used by bench/bench_fit.py and examples/fit/.
"""

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dposer_cli.bodies import camera as cam
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.core.paths import demo_checkpoint, official_checkpoint, shared_data_dir
from dposer_cli.io.keypoints import COCO_TO_OPENPOSE
from dposer_cli.metrics import pa_mpjpe
from tests._fixtures.priors import write_tiny_prior

torch.set_num_threads(1)


# ---------------------------------------------------------------- synthetic scenes
@dataclass
class Scene:
    keypoints: np.ndarray  # (P, K, 3) OpenPose-25 (bodies) or hand-21, noisy, some dropped (confidence 0)
    joints: np.ndarray  # (P, 22|21, 3) ground-truth body22 / hand21 joints, camera coordinates, metres
    params: dict[str, np.ndarray]  # ground-truth parameters (P, ...)
    width: int
    height: int
    focal: float


_MODELS: dict[str, object] = {}


def _model(kind: str):
    if kind not in _MODELS:
        from dposer_cli.bodies.mannequin import MannequinBody, MannequinHand

        _MODELS[kind] = MannequinBody() if kind == "body" else MannequinHand("right")
    return _MODELS[kind]


def reference_poses(part: str = "body") -> np.ndarray:
    path = shared_data_dir() / "poses" / f"{part}_reference_train.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return np.load(path)["poses"]


def synthetic_scene(
    poses: np.ndarray,
    *,
    seed: int = 0,
    width: int = 1280,
    height: int = 720,
    noise_px: float = 1.5,
    drop: int = 2,
    hand: bool = False,
    yaw_deg: float = 30.0,
    facing_away: bool = False,
    spacing: float = 0.9,
) -> Scene:
    """Pose the default body (or right hand) with `poses`, place the people side by side in front of a
    camera with focal √(W²+H²) at the image centre, and make detector-like keypoints."""
    rng = np.random.default_rng(seed)
    p = len(poses)
    model = _model("hand" if hand else "body")
    focal = math.hypot(width, height)
    if hand:
        axis = rng.normal(size=(p, 3))
        orient = axis / np.linalg.norm(axis, axis=1, keepdims=True) * rng.uniform(0, math.pi, (p, 1))
        transl = np.stack(
            [rng.uniform(-0.03, 0.03, p), rng.uniform(-0.03, 0.03, p), rng.uniform(0.45, 0.6, p)], 1
        )
        params = {"hand_pose": poses, "global_orient": orient}
        joint_set, core = "hand21", "hand21"
    else:
        yaw = np.deg2rad(rng.uniform(-yaw_deg, yaw_deg, p)) + (math.pi if facing_away else 0.0)
        tilt = np.deg2rad(rng.uniform(-8, 8, (p, 2)))
        body_rot = torch.as_tensor(np.stack([tilt[:, 0], yaw, tilt[:, 1]], 1), dtype=torch.float32)
        orient = cam.compose_axis_angle(cam.camera_orient(p), body_rot).numpy()
        span = spacing * (
            p - 1
        )  # people side by side, vertically centred (the pelvis is 0.35 m below the origin)
        transl = np.stack(
            [
                np.linspace(-span, span, p) + rng.uniform(-0.1, 0.1, p),
                rng.uniform(0.15, 0.3, p),
                rng.uniform(4.0, 5.0, p),
            ],
            1,
        )
        params = {"body_pose": poses, "global_orient": orient}
        joint_set, core = "openpose25", "body22"
    params["transl"] = transl
    params["betas"] = rng.normal(0, 0.5, (p, 10))
    with torch.no_grad():
        out = model(
            **{k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in params.items()},
            return_vertices=False,
        )
    joints = out.joints
    center = torch.tensor([[width / 2, height / 2]]).expand(p, 2)
    uv = cam.perspective_project(
        joints[:, model.joint_set(joint_set)], torch.full((p,), focal), center
    ).numpy()
    uv = uv + rng.normal(0, noise_px, uv.shape)
    conf = rng.uniform(0.6, 1.0, uv.shape[:2])
    for i in range(p):  # detector misses: a few limb/face points dropped (torso kept)
        conf[i, rng.choice(np.arange(6, uv.shape[1]), drop, replace=False)] = 0.0
    kp = np.concatenate([uv, conf[..., None]], -1).astype(np.float32)
    kp[kp[..., 2] == 0, :2] = 0.0
    return Scene(
        kp,
        joints[:, model.joint_set(core)].numpy(),
        {k: np.asarray(v) for k, v in params.items()},
        width,
        height,
        focal,
    )


def _openpose25_to_coco133(kp25: np.ndarray) -> np.ndarray:
    """Inverse of the reader's COCO-WholeBody → OpenPose mapping for the 25 body points (feet included)."""
    merged = np.zeros(kp25.shape[:-2] + (135, 3), np.float32)
    merged[..., COCO_TO_OPENPOSE[:25], :] = kp25
    return np.concatenate(
        [
            merged[..., :17, :],
            merged[..., 19:25, :],
            merged[..., 67:135, :],
            merged[..., 25:46, :],
            merged[..., 46:67, :],
        ],
        axis=-2,
    )


def write_keypoints(path: Path, kp: np.ndarray, fmt: str) -> Path:
    """Write (P, K, 3) keypoints (OpenPose-25 or hand-21) as `fmt`: openpose, vitpose, coco17, mmpose-hand."""
    if fmt == "openpose":  # 25 body points, or OpenPose-135 (body, left hand, right hand, face 68)
        data = {
            "version": 1.3,
            "people": [
                {
                    "person_id": [-1],
                    "pose_keypoints_2d": k[:25].reshape(-1).tolist(),
                    "hand_left_keypoints_2d": k[25:46].reshape(-1).tolist(),
                    "hand_right_keypoints_2d": k[46:67].reshape(-1).tolist(),
                    "face_keypoints_2d": k[67:135].reshape(-1).tolist(),
                }
                for k in kp
            ],
        }
    elif fmt == "vitpose":
        data = [
            {
                "bbox": [*k[k[:, 2] > 0, :2].min(0).tolist(), *k[k[:, 2] > 0, :2].max(0).tolist(), 0.99],
                "keypoints": _openpose25_to_coco133(k).tolist(),
            }
            for k in kp
        ]
    elif fmt == "coco17":
        data = [{"keypoints": _openpose25_to_coco133(k)[:17].tolist()} for k in kp]
    elif fmt == "mmpose-hand":
        data = [
            {
                "keypoints": k[:, :2].tolist(),
                "keypoint_scores": k[:, 2].tolist(),
                "bbox": [[0, 0, 10, 10]],
                "bbox_score": 0.9,
            }
            for k in kp
        ]
    else:
        raise ValueError(fmt)
    path.write_text(json.dumps(data))
    return path


def write_blank_image(path: Path, width: int, height: int) -> Path:
    from PIL import Image

    Image.new("RGB", (width, height), (128, 128, 128)).save(path)
    return path


def fit(
    tmp_path: Path,
    scene: Scene,
    *,
    fmt: str = "openpose",
    part: Part = Part.body,
    name: str = "scene",
    **kwargs,
) -> tuple[object, dict]:
    """Write the scene's image + keypoints, run the service, return (result, npz arrays)."""
    from dposer_cli.services import fit_image as svc

    img = write_blank_image(tmp_path / f"{name}.png", scene.width, scene.height)
    kp = write_keypoints(tmp_path / f"{name}.json", scene.keypoints, fmt)
    options = {
        "focal": scene.focal,
        "steps": 10,
        "prior": "none",
        "device": "cpu",
        "overlay": False,
        **kwargs,
    }
    req = svc.FitImageRequest(
        images=(img,), keypoints=(kp,), part=part, out=tmp_path / f"out_{name}", **options
    )
    result = svc.run(req)
    data = dict(np.load(result.outputs["npz"][0]))
    return result, data


def pa_mm(data: dict, scene: Scene) -> np.ndarray:
    order = data["person_index"]
    return pa_mpjpe(torch.as_tensor(data["joints"]), torch.as_tensor(scene.joints[order])).numpy() * 1000


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("fmt", ["openpose", "vitpose", "coco17"])
def test_body_fit_from_each_keypoint_format_recovers_the_pose(tmp_path, fmt):
    scene = synthetic_scene(reference_poses()[[10, 200]], seed=1)
    result, data = fit(tmp_path, scene, fmt=fmt, steps=16, prior="l2")
    assert (
        data["body_pose"].shape == (2, 63)
        and data["betas"].shape == (2, 10)
        and data["transl"].shape == (2, 3)
    )
    assert data["joints"].shape == (2, 22, 3) and data["keypoints"].shape == (2, 25, 3)
    assert (
        "left_hand_pose" not in data
        and str(data["part"]) == "body"
        and str(data["body_model"]) == "mannequin"
    )
    np.testing.assert_allclose(data["focal"], scene.focal)
    assert (data["reprojection_error_px"] < 9).all(), data["reprojection_error_px"]  # 1.5 px noise, 20 steps
    # depth within 10 % from focal + body size (the shape is not known); 3D pose within a few cm
    assert np.abs(data["transl"][:, 2] / scene.params["transl"][:, 2] - 1).max() < 0.1
    assert pa_mm(data, scene).mean() < 70
    assert result.info["persons"] == 2 and result.metrics["reprojection_error_px"] < 9


def test_persons_in_a_batch_are_fitted_independently(tmp_path):
    """Per-sample losses: a person fitted among others ends where it ends when fitted alone."""
    scene = synthetic_scene(reference_poses()[[3, 50, 77]], seed=2)
    _, both = fit(tmp_path, scene, name="all", steps=6)
    alone = Scene(scene.keypoints[1:2], scene.joints[1:2], {}, scene.width, scene.height, scene.focal)
    _, one = fit(tmp_path, alone, name="one", steps=6)
    for key in ("body_pose", "global_orient", "transl", "betas"):
        np.testing.assert_allclose(both[key][1], one[key][0], atol=2e-4, err_msg=key)


def test_person_facing_away_is_fitted_facing_away(tmp_path):
    scene = synthetic_scene(reference_poses()[[5, 6]], seed=3, facing_away=True, yaw_deg=15)
    _, data = fit(tmp_path, scene, steps=8, prior="l2")
    from dposer_cli.bodies.kinematics import batch_rodrigues

    rot = batch_rodrigues(torch.as_tensor(data["global_orient"]))
    assert (rot[:, 2, 2] > 0.5).all(), rot[:, 2, 2]  # the body's +z (its front) points away from the camera


def test_side_view_tries_both_facings_per_person(tmp_path, caplog):
    from dposer_cli.tasks.fit import side_view

    scene = synthetic_scene(reference_poses()[[8, 9, 11]], seed=4, yaw_deg=0)
    kp = torch.as_tensor(scene.keypoints)
    assert not side_view(kp).any()
    side = kp.clone()
    side[1, 5, :2] = side[1, 2, :2] + torch.tensor([4.0, 1.0])  # shoulders 4 px apart: seen from the side
    assert side_view(side).tolist() == [False, True, False]
    scene.keypoints = side.numpy()
    with caplog.at_level(logging.INFO, logger="dposer_cli"):
        _, data = fit(tmp_path, scene, steps=4)
    assert "1 person(s) seen from the side" in caplog.text
    assert data["body_pose"].shape == (3, 63)


def test_hand_fit_from_mmpose_json(tmp_path):
    poses = reference_poses("hand")[[1, 40]]
    scene = synthetic_scene(poses, seed=5, hand=True, width=224, height=224, noise_px=1.0, drop=1)
    _, data = fit(tmp_path, scene, fmt="mmpose-hand", part=Part.hand, steps=12, prior="l2")
    assert data["hand_pose"].shape == (2, 45) and "body_pose" not in data
    assert data["joints"].shape == (2, 21, 3)
    assert (data["reprojection_error_px"] < 3).all(), data["reprojection_error_px"]  # 1 px noise
    # depth up to the size ambiguity (true hands have random shapes)
    assert np.abs(data["transl"][:, 2] / scene.params["transl"][:, 2] - 1).max() < 0.15
    assert pa_mm(data, scene).mean() < 20


def test_wholebody_with_the_mannequin_fits_hands_and_skips_the_face(tmp_path, caplog):
    scene = synthetic_scene(reference_poses()[[12]], seed=6)
    ckpt = write_tiny_prior(tmp_path / "wb.pt", Part.wholebody, width=64)
    with caplog.at_level(logging.INFO, logger="dposer_cli"):
        result, data = fit(tmp_path, scene, part=Part.wholebody, prior="dposer", checkpoint=ckpt, steps=3)
    assert "face keypoints skipped" in caplog.text
    assert data["left_hand_pose"].shape == (1, 45) and data["right_hand_pose"].shape == (1, 45)
    assert "expression" not in data and data["keypoints"].shape == (1, 67, 3)
    assert result.info["nfe"] == 5 * 3  # one network evaluation per pose-stage iteration


def test_dposer_prior_counts_one_evaluation_per_pose_iteration(tmp_path):
    scene = synthetic_scene(reference_poses()[[14, 15]], seed=7)
    ckpt = write_tiny_prior(tmp_path / "body.pt", Part.body, width=64)
    result, _ = fit(tmp_path, scene, prior="dposer", checkpoint=ckpt, steps=4)
    assert result.info["nfe"] == 20 and result.info["checkpoint"].endswith("body.pt")


def test_init_file_restarts_from_an_earlier_fit(tmp_path):
    scene = synthetic_scene(reference_poses()[[20, 21]], seed=8)
    _, first = fit(tmp_path, scene, name="a", steps=10)
    earlier = tmp_path / "out_a" / "a.npz"
    _, again = fit(tmp_path, scene, name="b", steps=1, init=(earlier,))
    assert (
        np.abs(again["body_pose"] - first["body_pose"]).max() < 0.075
    )  # 5 pose stages × one Adam step of 0.01
    assert np.abs(again["transl"] - first["transl"]).max() < 0.05


def test_person_index_and_bad_person_index(tmp_path):
    scene = synthetic_scene(reference_poses()[[30, 31, 32]], seed=9)
    _, data = fit(tmp_path, scene, steps=2, person="2")
    assert data["person_index"].tolist() == [2]
    with pytest.raises(InputError, match="has only 3 person"):
        fit(tmp_path, scene, steps=2, person="3", name="bad")


def test_video_folder_shares_shape_per_person_and_temporal_pass_smooths(tmp_path):
    poses = reference_poses()
    frames, n = tmp_path / "frames", 5
    frames.mkdir()
    rng = np.random.default_rng(0)
    base = synthetic_scene(poses[[40, 41]], seed=10, noise_px=0.0, drop=0)
    for f in range(n):  # the same two people, walking sideways, with jittery detections
        kp = base.keypoints.copy()
        kp[..., 0] += 6 * f
        kp[..., :2] += rng.normal(0, 3.0, kp[..., :2].shape)
        write_blank_image(frames / f"{f:04d}.png", base.width, base.height)
        write_keypoints(frames / f"{f:04d}.json", kp, "openpose")
    from dposer_cli.services import fit_image as svc

    acc = {}
    for temporal in (False, True):
        req = svc.FitImageRequest(
            images=(frames,),
            part=Part.body,
            out=tmp_path / f"out{temporal}",
            focal=base.focal,
            steps=6,
            prior="l2",
            device="cpu",
            overlay=False,
            temporal=temporal,
        )
        result = svc.run(req)
        assert len(result.outputs["npz"]) == n
        files = [dict(np.load(p)) for p in result.outputs["npz"]]
        betas = np.stack([f["betas"] for f in files])  # (frames, persons, 10)
        np.testing.assert_allclose(betas, np.broadcast_to(betas[:1], betas.shape))
        assert not np.allclose(betas[0, 0], betas[0, 1])
        joints = np.stack([f["joints"] for f in files])  # (frames, persons, 22, 3)
        acc[temporal] = np.linalg.norm(joints[2:] - 2 * joints[1:-1] + joints[:-2], axis=-1).mean()
    assert acc[True] < acc[False]


def test_temporal_needs_a_frame_folder(tmp_path):
    scene = synthetic_scene(reference_poses()[[1]], seed=11)
    with pytest.raises(InputError, match="--temporal needs a folder"):
        fit(tmp_path, scene, temporal=True)


@pytest.mark.skipif(
    not (demo_checkpoint(Part.body).is_file() or official_checkpoint(Part.body).is_file()),
    reason="no trained body prior (bundled demo dposer_cli/assets/demo/body.pt or downloaded "
    "official weights); the prior comparison needs one",
)
@pytest.mark.slow
def test_dposer_prior_beats_no_prior_and_l2_prior(tmp_path):
    """The point of the prior: with noisy, incomplete keypoints the 3D pose is closer to the truth."""
    scene = synthetic_scene(reference_poses()[[100, 900, 2500, 4000]], seed=14, noise_px=5.0, drop=5)
    errors = {}
    t0 = time.perf_counter()
    for prior in ("dposer", "none", "l2"):
        _, data = fit(tmp_path, scene, name=prior, steps=25, prior=prior)
        errors[prior] = float(pa_mm(data, scene).mean())
    print(f"PA-MPJPE mm: {errors} ({time.perf_counter() - t0:.1f} s)")
    assert errors["dposer"] < errors["none"] and errors["dposer"] < errors["l2"], errors


@pytest.fixture(scope="module")
def body_models(tmp_path_factory):
    from tests._fixtures.body_models import write_body_models_tree

    return write_body_models_tree(tmp_path_factory.mktemp("body_models"))


def test_wholebody_with_smplx_fits_hands_jaw_and_expression_from_135_keypoints(tmp_path, body_models, caplog):
    scene = synthetic_scene(reference_poses()[[13]], seed=13)
    rng = np.random.default_rng(0)
    extra = np.concatenate(
        [scene.keypoints[:, :1, :2] + rng.normal(0, 20, (1, 110, 2)), np.full((1, 110, 1), 0.8)], -1
    )  # hands and face near the nose (mechanics only)
    scene.keypoints = np.concatenate([scene.keypoints, extra], 1).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="dposer_cli"):
        _, data = fit(tmp_path, scene, part=Part.wholebody, body_model=body_models, steps=2, prior="l2")
    assert "face keypoints skipped" not in caplog.text and str(data["body_model"]) == "smplx"
    assert data["keypoints"].shape == (1, 135, 3) and data["expression"].shape == (1, 100)
    assert data["jaw_pose"].shape == (1, 3) and data["left_hand_pose"].shape == (1, 45)
    assert np.isfinite(data["reprojection_error_px"]).all()


def test_hand_fit_with_mano(tmp_path, body_models):
    poses = reference_poses("hand")[[3, 4]]
    scene = synthetic_scene(poses, seed=14, hand=True, width=224, height=224)
    _, data = fit(
        tmp_path, scene, fmt="mmpose-hand", part=Part.hand, body_model=body_models, steps=2, prior="l2"
    )
    assert str(data["body_model"]) == "mano" and data["hand_pose"].shape == (2, 45)
    assert np.isfinite(data["transl"]).all() and (data["transl"][:, 2] > 0).all()


def test_video_of_hands_keeps_one_palm_orientation_per_frame(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    scene = synthetic_scene(reference_poses("hand")[[5]], seed=15, hand=True, width=224, height=224)
    for f in range(3):
        write_blank_image(frames / f"{f}.png", 224, 224)
        write_keypoints(
            frames / f"{f}.json", scene.keypoints + np.array([2.0 * f, 0, 0], np.float32), "mmpose-hand"
        )
    from dposer_cli.services import fit_image as svc

    req = svc.FitImageRequest(
        images=(frames,),
        part=Part.hand,
        out=tmp_path / "o",
        focal=scene.focal,
        steps=2,
        prior="l2",
        device="cpu",
        overlay=False,
    )
    files = [dict(np.load(p)) for p in svc.run(req).outputs["npz"]]
    assert [f["hand_pose"].shape for f in files] == [(1, 45)] * 3
    np.testing.assert_allclose(files[0]["betas"], files[2]["betas"])


# ---------------------------------------------------------------- priors
def test_fit_image_offers_the_dposer_none_and_l2_priors_by_name(tmp_path):
    scene = synthetic_scene(reference_poses()[[1]], seed=11)
    with pytest.raises(InputError, match="unknown --prior 'gmm'"):
        fit(tmp_path, scene, prior="gmm")


def _narrow_gmm(part: Part, mean: np.ndarray, var: float = 1e-4):
    from dposer_cli.engine.baselines import GaussianMixturePrior

    gmm = GaussianMixturePrior(part, 1)
    d = PARTS[part].dim
    gmm.means_.copy_(torch.as_tensor(mean, dtype=torch.float64)[None])
    gmm.covariances_.copy_(var * torch.eye(d, dtype=torch.float64)[None])
    gmm.mean_pose.copy_(torch.as_tensor(mean, dtype=torch.float32))
    return gmm


def test_fit_uses_a_given_prior_model_and_rejects_one_of_another_part(tmp_path):
    """A narrow one-component GMM around pose M pulls the fit to M although the keypoints show another pose."""
    poses = reference_poses()
    scene = synthetic_scene(poses[[100]], seed=3, noise_px=1.0, drop=0)
    target = poses[2500]
    result, data = fit(
        tmp_path, scene, name="gmm", steps=15, prior="gmm", prior_model=_narrow_gmm(Part.body, target)
    )
    _, free = fit(tmp_path, scene, name="none", steps=15, prior="none")
    assert result.info["prior"] == "gmm" and str(data["prior"]) == "gmm"
    pulled = np.abs(data["body_pose"][0] - target).mean()
    assert pulled < 0.05 < np.abs(free["body_pose"][0] - target).mean(), pulled
    with pytest.raises(InputError, match="a hand prior, but the fit is --part body"):
        fit(
            tmp_path,
            scene,
            name="bad",
            steps=1,
            prior="gmm",
            prior_model=_narrow_gmm(Part.hand, np.zeros(45)),
        )


# ---------------------------------------------------------------- pictures
def test_fit_picture_shows_the_overlay_the_view_from_above_and_a_legend(tmp_path):
    from PIL import Image

    from dposer_cli.render.scene import PERSON_COLORS
    from tests.render._figures import covered

    scene = synthetic_scene(
        reference_poses()[[10, 200]], seed=4, width=640, height=360
    )  # 4.9 m and 4.5 m away
    result, _ = fit(tmp_path, scene, steps=4, prior="l2", overlay=True, renderer="soft")
    (entry,) = result.info["images"]
    with Image.open(entry["overlay"]) as im:
        assert im.size == (640, 360)
    with Image.open(entry["views"]) as im:
        views = np.asarray(im.convert("RGB"))
    top_h = max(96, round(0.45 * 360))
    assert views.shape[1] == 640 and views.shape[0] > 360 + top_h + 10  # photo, view from above, legend
    assert result.outputs["views"] == [entry["views"]]
    np.testing.assert_array_equal(views[:360], np.asarray(Image.open(entry["overlay"]).convert("RGB")))
    top = views[360 : 360 + top_h]
    depth = {}
    for p in range(2):
        want = np.asarray(PERSON_COLORS[p]) / sum(PERSON_COLORS[p])
        x = top.astype(np.float64)
        mask = (np.abs(x / np.maximum(x.sum(-1, keepdims=True), 1) - want).max(-1) < 0.04) & covered(top)
        assert mask.sum() > 100, p  # each fitted person seen from above, in its colour
        ys, _ = np.nonzero(mask)
        depth[p] = ys.mean()
    data = np.load(entry["npz"])
    far, near = np.argsort(-data["joints"][:, 0, 2])
    assert depth[far] < depth[near]  # farther up
    legend = views[360 + top_h :]
    assert (legend < 128).any()  # the legend text


def test_pictures_of_several_photos_drawn_on_threads_equal_those_drawn_on_one(tmp_path, monkeypatch):
    """One command, several photos: their pictures are drawn side by side (`render.threads`), each the same
    bytes as when drawn one after another, each beside its own photo's fit."""
    from dposer_cli.services import _fit_outputs
    from dposer_cli.services import fit_image as svc

    poses = reference_poses()
    paths = {"images": [], "keypoints": []}
    for k, i in enumerate((10, 200, 400)):
        scene = synthetic_scene(poses[[i]], seed=k, width=320, height=240)
        paths["images"].append(write_blank_image(tmp_path / f"p{k}.png", 320, 240))
        paths["keypoints"].append(write_keypoints(tmp_path / f"p{k}.json", scene.keypoints, "openpose"))
    pictures = {}
    for workers in (1, 3):
        monkeypatch.setattr(_fit_outputs, "picture_workers", lambda count, renderer, w=workers: w)
        req = svc.FitImageRequest(
            images=tuple(paths["images"]),
            keypoints=tuple(paths["keypoints"]),
            part=Part.body,
            out=tmp_path / f"out{workers}",
            focal=400.0,
            steps=4,
            prior="l2",
            device="cpu",
            overlay=True,
            renderer="soft",
        )
        result = svc.run(req)
        pictures[workers] = [p.read_bytes() for p in [*result.outputs["overlays"], *result.outputs["views"]]]
        assert [p.name for p in result.outputs["overlays"]] == [
            "p0_overlay.png",
            "p1_overlay.png",
            "p2_overlay.png",
        ]
    assert pictures[1] == pictures[3]
    assert len(set(pictures[1][:3])) == 3  # three different overlays


def test_a_tiny_photo_gets_a_views_picture_wide_enough_for_its_legend(tmp_path):
    """A 12×9 photo: the overlay keeps its size; the views picture pads it (it failed: "legend: width must be
    at least 16 px")."""
    from PIL import Image

    from dposer_cli.tasks.pictures import VIEWS_MIN_WIDTH

    scene = synthetic_scene(reference_poses()[[10]], seed=4, width=12, height=9)
    result, _ = fit(tmp_path, scene, steps=2, prior="l2", overlay=True, renderer="soft")
    (entry,) = result.info["images"]
    with Image.open(entry["overlay"]) as im:
        assert im.size == (12, 9)
    with Image.open(entry["views"]) as im:
        views = np.asarray(im.convert("RGB"))
    assert views.shape[1] == VIEWS_MIN_WIDTH and (views[9:] < 128).any()  # the view from above and the legend
