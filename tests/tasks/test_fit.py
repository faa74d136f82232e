"""`tasks.fit` on tensors: keypoints projected from known poses of the default (mannequin) body and hand,
fitted back; every test runs from a read-only working directory (the task writes nothing).

Also the shared fitting terms the task uses (GMoF, angle prior, the annealed prior schedule, best-of-hypotheses).
"""

import itertools
import math

import numpy as np
import pytest
import torch

from dposer_cli.bodies import camera as cam
from dposer_cli.bodies import load_body
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.trace import TRACE_ENV
from dposer_cli.engine.baselines import L2Prior, NoPrior
from dposer_cli.engine.optimize import (
    ANGLE_DIMS,
    ANGLE_SIGNS,
    T_RANGES,
    PriorSchedule,
    Stage,
    angle_prior,
    best_rows,
    gmof,
    optimize,
)
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.tasks import fit as tf
from tests._fixtures.body_models import write_mano, write_smplx
from tests._fixtures.priors import write_tiny_prior
from tests._fixtures.replays import step_calls
from tests.services.test_fit_image import _narrow_gmm, reference_poses

H, W = 720, 1280


@pytest.fixture(autouse=True)
def read_only_cwd(tmp_path, monkeypatch):
    """Every test runs in a directory nobody may write to: the task must not touch files."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.chdir(ro)
    yield
    ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.fixture(scope="module")
def body():
    return load_body("body")


@pytest.fixture(scope="module")
def hand():
    return load_body("hand")


def _body_pose(n: int) -> torch.Tensor:
    pose = torch.zeros(n, 63)
    pose[:, 52], pose[:, 55] = -1.0, 1.0  # elbows bent
    pose[:, 9] = 0.6  # a knee
    pose[1:, 12] = 0.3
    return pose


def _project(model, joint_set: str, params: dict, focal: float, center: tuple[float, float]) -> torch.Tensor:
    """(B, K, 3) keypoints (px, px, confidence 1) of the model's `joint_set` joints."""
    with torch.no_grad():
        joints = model(**params, return_vertices=False).joints[:, model.joint_set(joint_set)]
    n = joints.shape[0]
    uv = cam.perspective_project(joints, torch.full((n,), focal), torch.tensor([center]).expand(n, 2))
    return torch.cat([uv, torch.ones(n, uv.shape[1], 1)], -1)


def _body_scene(body, n: int = 2) -> tuple[tf.FitInput, dict[str, torch.Tensor]]:
    params = {
        "body_pose": _body_pose(n),
        "global_orient": cam.camera_orient(n),
        "transl": torch.stack(
            [torch.linspace(-0.6, 0.6, n), torch.full((n,), 0.2), torch.full((n,), 4.5)], 1
        ),
    }
    kp = _project(body, "openpose25", params, math.hypot(W, H), (W / 2, H / 2))
    return tf.FitInput.for_image(kp, (H, W)), params


# ---------------------------------------------------------------- fitting from tensors
def test_fit_brings_keypoints_of_a_known_body_pose_to_a_few_pixels(body):
    inputs, truth = _body_scene(body)
    calls = []
    result = tf.fit(body, None, inputs, steps=12, progress=lambda done, total: calls.append((done, total)))
    assert (result.reprojection_px < 4).all(), result.reprojection_px
    assert result.nfe == 0 and result.fit_seconds > 0 and result.prior_seconds == 0
    assert calls[-1] == (6 + 12 + 5 * 12,) * 2 and len(calls) == 6 + 12 + 5 * 12
    assert set(result.params) == {"body_pose", "global_orient", "transl", "betas"}
    assert result.params["body_pose"].shape == (2, 63) and result.params["betas"].shape == (2, 10)
    assert result.joints.shape == (2, 22, 3) and result.data_loss.shape == (2,)
    assert list(result.stage_losses) == ["translation_loss", "orientation_loss"] + [
        f"body-{i}_loss" for i in range(1, 6)
    ]
    # rows in input order, at the right depth
    torch.testing.assert_close(result.params["transl"], truth["transl"], atol=0.15, rtol=0)
    with torch.no_grad():  # the joints of the result
        out = tf.body_vertices(body, result.params)
    torch.testing.assert_close(result.joints, out.joints[:, body.joint_set("body22")])
    assert out.vertices is not None and out.vertices.shape[0] == 2


def test_fit_of_a_hand_from_hand21_keypoints(hand):
    n = 2
    gen = torch.Generator().manual_seed(0)
    pose = 0.3 * torch.randn(n, 45, generator=gen)
    params = {
        "hand_pose": pose,
        "global_orient": torch.tensor([[0.3, -0.4, 0.2], [2.0, 0.5, -0.3]]),
        "transl": torch.tensor([[0.02, -0.01, 0.5], [-0.02, 0.02, 0.55]]),
    }
    kp = _project(hand, "hand21", params, 300.0, (112.0, 112.0))
    inputs = tf.FitInput.for_image(kp, (224, 224), focal=300.0)
    result = tf.fit(hand, L2Prior(Part.hand), inputs, part=Part.hand, keypoint_layout="hand21", steps=12)
    assert (result.reprojection_px < 3).all(), result.reprojection_px
    assert set(result.params) == {"hand_pose", "global_orient", "transl", "betas"}
    assert result.joints.shape == (2, 21, 3) and result.nfe == 0
    assert ((result.params["transl"][:, 2] / params["transl"][:, 2] - 1).abs() < 0.15).all()
    assert "hand-5_loss" in result.stage_losses


def test_dposer_prior_evaluations_are_counted_by_the_optimiser(body, tmp_path_factory):
    ckpt = write_tiny_prior(tmp_path_factory.mktemp("prior") / "body.pt", Part.body, width=64)
    prior = DPoserPrior.load(Part.body, ckpt)
    inputs, _ = _body_scene(body, 1)
    gen = torch.Generator().manual_seed(0)
    result = tf.fit(body, prior, inputs, steps=3, generator=gen)
    assert (
        result.nfe == 5 * 3 and result.prior_seconds > 0
    )  # one per pose-stage iteration, none for the camera


@pytest.mark.parametrize("model_kind", ["mannequin", "smplx", "mannequin-hand", "mano"])
def test_replayed_steps_give_the_eager_fit_bit_for_bit(model_kind, body, hand, tmp_path_factory, monkeypatch):
    """Steps replayed whole (`StepPlan`, `record_step`) against the same fit with every replay off: the same
    parameters to the bit, the same prior evaluation count — and the replays did run."""
    part = Part.hand if "hand" in model_kind or model_kind == "mano" else Part.body
    ckpt = write_tiny_prior(tmp_path_factory.mktemp("prior") / f"{part.value}.pt", part, width=64)
    prior = DPoserPrior.load(part, ckpt)
    folder = tmp_path_factory.mktemp("models")
    if model_kind == "smplx":
        body = load_body("body", write_smplx(folder))
    elif model_kind == "mano":
        hand = load_body("hand", write_mano(folder))
    if part is Part.body:
        model, (inputs, _), layout = body, _body_scene(body, 2), "openpose135"
    else:
        model, layout = hand, "hand21"
        params = {"hand_pose": 0.3 * torch.randn(1, 45, generator=torch.Generator().manual_seed(2))}
        params |= {
            "global_orient": torch.tensor([[0.3, -0.4, 0.2]]),
            "transl": torch.tensor([[0.0, 0.0, 0.5]]),
        }
        kp = _project(hand, "hand21", params, 300.0, (112.0, 112.0))
        inputs = tf.FitInput.for_image(kp, (224, 224), focal=300.0)

    def run() -> tf.FitResult:
        gen = torch.Generator().manual_seed(0)
        return tf.fit(model, prior, inputs, part=part, keypoint_layout=layout, steps=8, generator=gen)

    with step_calls() as calls:
        replayed = run()
    recordings = {id(c) for c in calls if c is not None}
    replays = sum(c is not None for c in calls)
    monkeypatch.setenv(TRACE_ENV, "0")
    eager = run()
    for key, value in eager.params.items():
        assert torch.equal(replayed.params[key], value), key
    assert replayed.nfe == eager.nfe == 5 * 8
    # every step replayed but two warm-up steps and the recording (its own eager run) per recording: the
    # camera stages', and one for all five pose stages (the hand's last stage frees one more parameter)
    assert replays == len(calls) - 3 * len(recordings) and len(calls) >= 5 * 8
    # camera stages: two for a model whose root turns its joints rigidly (the mannequin), else none (eager)
    camera = 2 if getattr(model, "rigid_root", False) else 0
    assert len(recordings) == camera + (2 if part is Part.hand else 1)


def test_video_tracks_share_a_shape_and_the_temporal_pass_runs(body):
    frames = 3
    inputs, _ = _body_scene(body, 2)
    kp = torch.cat([inputs.keypoints + torch.tensor([4.0 * f, 0, 0]) for f in range(frames)])
    video = tf.FitInput(
        kp,
        inputs.focal.repeat(frames),
        inputs.center.repeat(frames, 1),
        inputs.image_size.repeat(frames, 1),
        track=torch.tensor([0, 1] * frames),
        frame=torch.arange(frames).repeat_interleave(2),
    )
    result = tf.fit(body, NoPrior(Part.body), video, steps=3, temporal=True)
    betas = result.params["betas"].reshape(frames, 2, -1)
    torch.testing.assert_close(betas, betas[:1].expand_as(betas))
    assert "temporal_loss" in result.stage_losses and result.params["body_pose"].shape == (6, 63)


def test_fit_rejects_bad_combinations(body):
    inputs, _ = _body_scene(body, 1)
    with pytest.raises(InputError, match="a hand prior, but the fit is --part body"):
        tf.fit(body, L2Prior(Part.hand), inputs, steps=1)
    with pytest.raises(InputError, match="needs body keypoints; these keypoints are hand21"):
        tf.fit(body, None, inputs, keypoint_layout="hand21", steps=1)
    with pytest.raises(InputError, match="temporal pass needs a track"):
        tf.fit(body, None, inputs, steps=1, temporal=True)
    with pytest.raises(InputError, match="fits body, hand or wholebody"):
        tf.fit(body, None, inputs, part=Part.face, steps=1)


def test_every_fittable_part_has_a_spec_with_five_pose_stages():
    assert set(tf.FIT_SPECS) == {Part.body, Part.hand, Part.wholebody}
    for spec in tf.FIT_SPECS.values():
        assert {len(v) for v in spec.weights.values()} == {5}
        assert set(spec.temporal_weights) <= set(spec.weights)


def test_side_view_is_detected_per_person():
    kp = torch.zeros(3, 25, 3)
    kp[..., 2] = 1.0
    kp[:, 2, :2], kp[:, 5, :2] = torch.tensor([600.0, 300.0]), torch.tensor([680.0, 300.0])  # shoulders 80 px
    kp[:, 9, :2], kp[:, 12, :2], kp[:, 8, :2] = (
        torch.tensor([610.0, 450.0]),
        torch.tensor([670.0, 450.0]),
        torch.tensor([640.0, 450.0]),
    )
    assert not tf.side_view(kp).any() and not tf.facing_away(kp).any()
    kp[1, 5, :2] = kp[1, 2, :2] + torch.tensor([4.0, 1.0])  # shoulders 4 px apart: seen from the side
    assert tf.side_view(kp).tolist() == [False, True, False]
    turned = kp.clone()
    turned[:, [2, 5, 9, 12]] = kp[:, [5, 2, 12, 9]]  # left/right swapped: the back is to the camera
    assert tf.facing_away(turned).all()


# ---------------------------------------------------------------- the shared fitting terms
def test_gmof_is_quadratic_near_zero_and_saturates_at_sigma_squared():
    x = torch.tensor([0.0, 1.0, 1e6])
    np.testing.assert_allclose(gmof(x, 100.0).numpy(), [0.0, 1e4 / 10001, 1e4], rtol=1e-4)


def test_angle_prior_penalises_elbows_and_knees_bent_the_wrong_way():
    natural, unnatural = torch.zeros(2, 63), torch.zeros(2, 63)
    for dim, sign in zip(ANGLE_DIMS, ANGLE_SIGNS, strict=True):
        natural[:, dim], unnatural[:, dim] = -sign * 1.0, sign * 1.0
    assert (angle_prior(unnatural) > 20 * angle_prior(natural)).all()


def test_prior_schedule_anneals_t_and_offers_baselines():
    schedule = PriorSchedule(NoPrior(Part.body), T_RANGES["fitting"], weighting=tf.PRIOR_WEIGHTING)
    ts = [schedule.t(k, 200) for k in range(200)]
    assert ts[0] == pytest.approx(0.08 + 199 / 200 * 0.04) and ts[-1] == pytest.approx(0.08)
    assert all(a > b for a, b in itertools.pairwise(ts))
    pose = torch.randn(3, 63)
    assert NoPrior(Part.body).loss(pose, ts[0]).abs().sum() == 0
    np.testing.assert_allclose(
        L2Prior(Part.body).loss(pose, ts[0]).numpy(), (pose**2).sum(-1).numpy(), rtol=1e-6
    )


def test_prior_term_takes_an_outside_prior_object():
    gmm = _narrow_gmm(Part.body, reference_poses()[7], var=0.05)
    pose = torch.as_tensor(reference_poses()[[1, 2, 3]], dtype=torch.float32)
    seen = []

    def loss(params, step):
        value = step.prior(params["pose"])
        seen.append(value.detach())
        return value

    optimize(
        {"pose": pose.clone()},
        [Stage("s", 1, {"pose": 0.0}, uses_prior=True)],
        loss,
        prior=PriorSchedule(gmm, T_RANGES["fitting"], weighting=tf.PRIOR_WEIGHTING, horizon=10),
    )
    np.testing.assert_allclose(seen[0].numpy(), gmm.energy(pose).numpy(), rtol=1e-6)


def test_best_rows_picks_the_lowest_loss_per_sample_and_the_first_on_ties():
    owner = torch.tensor([0, 1, 2, 0, 2])
    loss = torch.tensor([5.0, 1.0, 2.0, 3.0, 2.0])
    assert best_rows(loss, owner, 3).tolist() == [3, 1, 2]
