"""`denoise-motion` service on the official Gestures example (cut to a few dozen frames for speed).

The prior is the closed-form Gaussian fitted to body_reference_train.npz (see test_complete), so the tests
need no trained weights; the bundled demo prior is tested too when present. The algorithm itself (schedules,
smoothing, rigid init) is tested on tensors in tests/tasks/test_denoise_motion.py.
"""

import numpy as np
import pytest
import torch

from dposer_cli.bodies import load_body
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import demo_checkpoint, shared_data_dir
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.services import denoise_motion as svc
from tests.services.test_complete import gaussian_prior

FRAMES = 48


@pytest.fixture(scope="module")
def prior():
    path = shared_data_dir() / "poses" / "body_reference_train.npz"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    return gaussian_prior(np.load(path)["poses"])


@pytest.fixture(scope="module")
def gestures():
    path = shared_data_dir() / "official" / "examples" / "Gestures_3_poses_batch005.npz"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    data = np.load(path)
    return data["pose_body"][:FRAMES].astype(np.float32), data["root_orient"][:FRAMES].astype(np.float32)


@pytest.fixture(scope="module")
def body():
    return load_body("body")


def _gt_joints(body, pose, orient=None, transl=None) -> np.ndarray:
    b22 = body.joint_set("body22")
    with torch.no_grad():
        out = body(
            body_pose=torch.as_tensor(pose),
            global_orient=None if orient is None else torch.as_tensor(orient),
            transl=None if transl is None else torch.as_tensor(transl),
        )
    return out.joints[:, b22].numpy()


def test_denoising_40mm_noise_lowers_mpjpe_well_below_the_input(tmp_path, prior, gestures, body):
    pose, orient = gestures
    np.savez(tmp_path / "seq.npz", pose_body=pose, root_orient=orient)
    res = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "seq.npz",
            out=tmp_path / "o",
            noise_std=0.04,
            temporal="joints",
            render=False,
            device="cpu",
        ),
        prior=prior,
    )
    m = res.metrics
    assert m["mpjpe_mm"] < 0.4 * m["mpjpe_input_mm"]
    assert res.info["schedule"] == "motion-0.04" and res.info["nfe"] == 180 == res.info["steps"]
    # independent recomputation from the written file
    out = np.load(res.outputs["denoised"])
    np.testing.assert_array_equal(out["global_orient"], orient)  # passed through unchanged
    # spec §7.4: the protocol works in the body frame; the file's joints are in its global orientation's frame
    # (the pelvis stays put, so distances to the equally rotated ground truth are the metric's)
    gt = _gt_joints(body, pose, orient)
    np.testing.assert_allclose(
        np.linalg.norm(out["joints"] - gt, axis=-1).mean() * 1000, m["mpjpe_mm"], rtol=1e-4
    )
    np.testing.assert_allclose(_gt_joints(body, out["body_pose"], orient), out["joints"], atol=1e-5)
    noise = out["observed_joints"] - gt
    assert noise.std() == pytest.approx(0.04, rel=0.1)  # the observations carry the requested noise
    assert out["body_pose"].shape == (FRAMES, 63) and float(out["fps"]) == 30.0


def test_a_denoised_file_read_back_is_a_consistent_joints_input(tmp_path, prior, gestures, body):
    """A poses input's root motion (orientation and translation) is passed through and the written joints are
    those parameters' joints, so the output fed back in scores its own joints against its own poses."""
    pose, orient = gestures
    transl = np.linspace([0.0, 0.9, 0.0], [1.0, 0.9, 2.0], FRAMES, dtype=np.float32)
    np.savez(tmp_path / "seq.npz", pose_body=pose, root_orient=orient, trans=transl)
    first = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "seq.npz", out=tmp_path / "a", temporal="joints", render=False, device="cpu"
        ),
        prior=prior,
    )
    out = np.load(first.outputs["denoised"])
    np.testing.assert_array_equal(out["transl"], transl)
    gt = _gt_joints(body, pose, orient, transl)
    np.testing.assert_allclose(_gt_joints(body, out["body_pose"], orient, transl), out["joints"], atol=1e-5)
    np.testing.assert_allclose(  # observations moved by the same root motion: the noise is unchanged
        np.linalg.norm(out["observed_joints"] - gt, axis=-1).mean() * 1000,
        first.metrics["mpjpe_input_mm"],
        rtol=1e-4,
    )
    again = svc.run(
        svc.DenoiseRequest(
            input=first.outputs["denoised"], out=tmp_path / "b", temporal="joints", render=False, device="cpu"
        ),
        prior=prior,
    )
    assert again.info["input_kind"] == "joints"
    assert again.metrics["mpjpe_input_mm"] < 0.01  # its joints are its poses' joints
    assert again.metrics["mpjpe_mm"] < 0.5 * first.metrics["mpjpe_mm"]


@pytest.mark.slow
@pytest.mark.skipif(not demo_checkpoint(Part.body).is_file(), reason="bundled demo prior not trained yet")
def test_demo_prior_denoising(tmp_path, gestures):
    np.savez(tmp_path / "seq.npz", pose_body=gestures[0])
    res = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "seq.npz",
            out=tmp_path / "o",
            noise_std=0.04,
            temporal="joints",
            render=False,
            device="cpu",
        ),
        prior=DPoserPrior.load(Part.body, demo_checkpoint(Part.body)),
    )
    assert res.metrics["mpjpe_mm"] < 0.5 * res.metrics["mpjpe_input_mm"]


def test_vertex_temporal_term_and_same_seed_same_result(tmp_path, prior, gestures):
    np.savez(tmp_path / "seq.npz", pose_body=gestures[0][:8])
    req = svc.DenoiseRequest(
        input=tmp_path / "seq.npz", out=tmp_path / "a", noise_std=0.02, render=False, device="cpu", seed=3
    )
    a = svc.run(req, prior=prior)
    assert a.info["temporal_term"] == "vertices" and a.info["schedule"] == "motion-0.02"
    assert a.metrics["mpjpe_mm"] < 0.6 * a.metrics["mpjpe_input_mm"]
    b = svc.run(svc.DenoiseRequest(**{**req.__dict__, "out": tmp_path / "b"}), prior=prior)
    np.testing.assert_array_equal(
        np.load(a.outputs["denoised"])["body_pose"], np.load(b.outputs["denoised"])["body_pose"]
    )


def test_occluded_legs_are_recovered_from_the_visible_joints(tmp_path, prior, gestures, body):
    pose = gestures[0]
    np.savez(tmp_path / "seq.npz", pose_body=pose)
    res = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "seq.npz",
            out=tmp_path / "o",
            noise_std=0.0,
            occluded=("legs",),
            temporal="joints",
            render=False,
            device="cpu",
        ),
        prior=prior,
    )
    m = res.metrics
    assert res.info["schedule"] == "motion-partial-legs" and len(res.info["occluded_joints"]) == 8
    assert m["mpjpe_visible_mm"] < 10.0 and m["mpjpe_input_mm"] == 0.0
    # the prior moves the hidden legs from their start (zero pose + 0.01 noise, spec §7.5) towards the truth
    straight = pose.copy()
    straight[:, [d for j in (0, 1, 3, 4, 6, 7, 9, 10) for d in range(3 * j, 3 * j + 3)]] = 0.0
    hidden22 = [j + 1 for j in (0, 1, 3, 4, 6, 7, 9, 10)]
    gt = _gt_joints(body, pose)
    start = np.linalg.norm(_gt_joints(body, straight)[:, hidden22] - gt[:, hidden22], axis=-1).mean() * 1000
    assert m["mpjpe_occluded_mm"] < start  # (a Gaussian prior knows little about legs given arms)


def test_joint_observations_in_a_world_frame(tmp_path, prior, gestures, body):
    """Given joints (rotated, translated, noisy): orientation and translation are fitted too."""
    pose = gestures[0][:16]
    rng = np.random.default_rng(0)
    orient = np.tile(np.array([1.1, 0.4, -0.6], np.float32), (16, 1))
    transl = np.tile(np.array([0.5, 1.0, 2.0], np.float32), (16, 1))
    gt = _gt_joints(body, pose, orient, transl)
    noisy = (gt + rng.normal(0, 0.03, gt.shape)).astype(np.float32)
    np.savez(tmp_path / "joints.npz", joints=noisy)
    res = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "joints.npz",
            out=tmp_path / "o",
            noise_std=0.03,
            temporal="joints",
            render=False,
            device="cpu",
        ),
        prior=prior,
    )
    out = np.load(res.outputs["denoised"])
    assert res.info["input_kind"] == "joints" and res.info["noise_added_m"] == 0.0
    assert "mpjpe_mm" not in res.metrics  # no poses in the file → no ground truth
    err_in = np.linalg.norm(noisy - gt, axis=-1).mean()
    err_out = np.linalg.norm(out["joints"] - gt, axis=-1).mean()
    assert err_out < 0.6 * err_in
    assert set(out.files) >= {"body_pose", "global_orient", "transl", "joints"}
    # with the poses next to the joints, the ground truth is known
    np.savez(tmp_path / "both.npz", joints=noisy, pose_body=pose, root_orient=orient, trans=transl)
    res = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "both.npz", out=tmp_path / "o2", temporal="joints", render=False, device="cpu"
        ),
        prior=prior,
    )
    assert res.metrics["mpjpe_input_mm"] == pytest.approx(err_in * 1000, rel=1e-4)
    assert res.metrics["mpjpe_mm"] < 0.6 * res.metrics["mpjpe_input_mm"]


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"occluded": ("legs",), "visible": ("arms",)}, "not both"),
        ({"noise_std": -0.1}, "non-negative"),
        ({"occluded": ("leg",)}, "did you mean"),
        ({"temporal": "mesh"}, "unknown temporal term"),
    ],
)
def test_bad_requests_are_input_errors(tmp_path, prior, gestures, kw, pattern):
    np.savez(tmp_path / "seq.npz", pose_body=gestures[0][:4])
    with pytest.raises(InputError, match=pattern):
        svc.run(
            svc.DenoiseRequest(
                input=tmp_path / "seq.npz", out=tmp_path / "o", render=False, device="cpu", **kw
            ),
            prior=prior,
        )


def test_joints_of_unknown_layout_are_rejected(tmp_path, prior):
    np.savez(tmp_path / "j.npz", joints=np.zeros((5, 17, 3), np.float32))
    with pytest.raises(InputError, match="17 joints per frame"):
        svc.run(
            svc.DenoiseRequest(input=tmp_path / "j.npz", out=tmp_path / "o", render=False, device="cpu"),
            prior=prior,
        )


# ---------------------------------------------------------------------------------------------- comparison.mp4
def _video(path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        return np.stack([frame for frame in reader])


@pytest.mark.parametrize("occluded", [(), ("legs",)])
def test_comparison_video_shares_one_camera_and_plots_the_error(tmp_path, prior, gestures, occluded):
    from tests.render._figures import covered

    pose = gestures[0][:6]
    np.savez(tmp_path / "seq.npz", pose_body=pose)
    res = svc.run(
        svc.DenoiseRequest(
            input=tmp_path / "seq.npz",
            out=tmp_path / "o",
            noise_std=0.04 if not occluded else 0.0,
            occluded=occluded,
            temporal="joints",
            renderer="soft",
            device="cpu",
        ),
        prior=prior,
    )
    frames = _video(res.outputs["comparison"])
    w, h, plot = 224, 288, 120  # three panels (input = ground truth, observed joints, denoised) over a plot
    assert frames.shape[0] == 6 and frames.shape[2] == 3 * w and frames.shape[1] >= h + plot
    for frame in frames[[0, -1]]:
        panels = [frame[:h, k * w : (k + 1) * w] for k in range(3)]
        for p in panels:
            inner = covered(p)
            inner[:20] = False  # captions
            assert inner.mean() > 0.02
        # one camera and scale: the ground-truth body and the denoised body cover about the same pixels
        a, b = covered(panels[0])[20:], covered(panels[2])[20:]
        assert (a & b).sum() / (a | b).sum() > 0.6
        if occluded:  # the hidden legs are not drawn: the observed skeleton ends above the knees
            ys = np.nonzero(covered(panels[1])[20:])[0] + 20
            assert ys.max() < np.nonzero(a)[0].max() + 20 - 0.25 * h
    plots = frames[:, h : h + plot]
    assert (np.abs(plots.astype(int) - (45, 110, 205)).sum(-1) < 60).sum(
        axis=(1, 2)
    ).min() > 20  # denoised curve
    assert not np.array_equal(plots[0], plots[-1])  # the cursor moves


def test_world_frame_sequences_are_shown_upright_and_from_the_front(body, gestures):
    """comparison.mp4's view of world-frame joints: AMASS's z-up, arbitrarily facing sequences are turned so
    that the body's mean up direction is the image's up and its mean facing is towards the camera, as the body
    frame has them; body-frame sequences are left as they are."""
    from dposer_cli.tasks.pictures import _facing_turn

    pose, orient = gestures  # the official example's root orientation: z up
    names = body.joint_names
    pelvis, neck, left, right = (names.index(n) for n in ("pelvis", "neck", "left_hip", "right_hip"))
    assert _facing_turn(_gt_joints(body, pose), body) is None
    for yaw in (0.0, 2.0, -2.5):  # the same motion turned about the vertical (z) axis
        spun = np.array(
            [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]], np.float32
        )
        world = _gt_joints(body, pose, orient) @ spun.T
        turn = _facing_turn(world, body)
        assert turn is not None
        np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-5)
        seen = world @ turn.T
        up = (seen[:, neck] - seen[:, pelvis]).mean(0)
        assert up[1] / np.linalg.norm(up) > 0.9999  # mean up is the image's up
        facing = np.cross(seen[:, left] - seen[:, right], [0.0, 1.0, 0.0]).mean(0)
        assert facing[2] > 0 and abs(facing[0]) < 1e-3 * np.linalg.norm(facing)  # faces the camera (+z)


def test_comparison_frames_drawn_on_threads_equal_those_drawn_on_one(monkeypatch, body, gestures):
    from dposer_cli.tasks import pictures

    pose = torch.as_tensor(gestures[0][:5])
    with torch.no_grad():
        result = body(body_pose=pose)
    obs = result.joints[:, :22] + 0.02 * torch.randn(5, 22, 3, generator=torch.Generator().manual_seed(0))
    visible = torch.ones(5, 22, dtype=torch.bool)
    frames = {}
    for workers in (1, 3):
        monkeypatch.setattr(pictures, "picture_workers", lambda count, renderer, w=workers: w)
        frames[workers] = pictures.comparison_frames(obs, visible, result, body, renderer="soft")
    np.testing.assert_array_equal(frames[1], frames[3])
    assert len({f.tobytes() for f in frames[1]}) == 5  # every frame drawn (the cursor moves)
