"""`tasks.denoise_motion` on tensors: joints of a short real motion (the official Gestures example) through the
default body model, noised or partly hidden; run from a read-only working directory (the task writes nothing).

The prior is the closed-form Gaussian fitted to body_reference_train.npz (see tests/services/test_complete).
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dposer_cli.bodies import load_body
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.core.rotations import axis_angle_to_quaternion
from dposer_cli.engine.baselines import NoPrior
from dposer_cli.engine.optimize import T_RANGES
from dposer_cli.tasks import denoise_motion as dm
from tests.services.test_complete import gaussian_prior

FRAMES = 16
LEGS22 = [j + 1 for j in (0, 1, 3, 4, 6, 7, 9, 10)]  # body22 indices of the `legs` mask group


@pytest.fixture(scope="module")
def prior():
    path = shared_data_dir() / "poses" / "body_reference_train.npz"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    return gaussian_prior(np.load(path)["poses"])


@pytest.fixture(scope="module")
def body():
    return load_body("body")


@pytest.fixture(scope="module")
def pose():
    path = shared_data_dir() / "official" / "examples" / "Gestures_3_poses_batch005.npz"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    return torch.as_tensor(np.load(path)["pose_body"][:FRAMES], dtype=torch.float32)


def _joints(body, pose, orient=None, transl=None):
    with torch.no_grad():
        out = body(body_pose=pose, global_orient=orient, transl=transl, return_vertices=False)
    return out.joints[:, body.joint_set("body22")]


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


def _err(a, b, mask=None):
    e = (a - b).norm(dim=-1)
    return float(e.mean() if mask is None else e[:, mask].mean())


def test_denoised_joints_are_closer_to_the_clean_ones_than_the_noisy_input(prior, body, pose):
    clean = _joints(body, pose)
    gen = torch.Generator().manual_seed(0)
    noisy = clean + 0.04 * torch.randn(clean.shape, generator=gen)
    calls = []
    fit = dm.denoise_motion(
        prior,
        body,
        noisy,
        noise_std=0.04,
        temporal="joints",
        generator=gen,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert fit.schedule.name == "motion-0.04" and fit.schedule.t_range == T_RANGES["motion-0.04"]
    assert fit.nfe == fit.schedule.steps == 180 and calls[-1] == (180, 180) and len(calls) == 180
    assert set(fit.params) == {"body_pose"} and fit.params["body_pose"].shape == (FRAMES, 63)
    assert fit.joints.shape == (FRAMES, 22, 3) and fit.temporal_term == "joints" and not fit.partial
    assert bool(fit.visible.all())
    assert _err(fit.joints, clean) < 0.5 * _err(noisy, clean)
    torch.testing.assert_close(fit.joints, _joints(body, fit.params["body_pose"]))  # the joints of the result
    m = dm.motion_metrics(noisy, fit.joints, clean, fit.visible, fit.partial)
    assert m["mpjpe_mm"] == pytest.approx(_err(fit.joints, clean) * 1000, rel=1e-5)
    assert m["mpjpe_input_mm"] == pytest.approx(_err(noisy, clean) * 1000, rel=1e-5)


def test_same_generator_seed_same_result_and_a_baseline_prior_costs_no_evaluations(prior, body, pose):
    clean = _joints(body, pose[:6])
    sched = replace(dm.SCHEDULES[0.02], steps_per_iter=4)
    a, b = (
        dm.denoise_motion(prior, body, clean, schedule=sched, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    )
    torch.testing.assert_close(a.params["body_pose"], b.params["body_pose"], rtol=0, atol=0)
    assert (
        a.nfe == 12 and a.temporal_term == "vertices" and a.schedule is sched
    )  # auto: the mannequin has a mesh
    assert dm.denoise_motion(NoPrior(Part.body), body, clean, schedule=sched).nfe == 0


def test_hidden_legs_are_filled_in_from_the_visible_joints(prior, body, pose):
    clean = _joints(body, pose)
    fit = dm.denoise_motion(
        prior,
        body,
        clean,
        noise_std=0.0,
        occluded=("legs",),
        temporal="joints",
        generator=torch.Generator().manual_seed(0),
    )
    assert (
        fit.schedule.name == "motion-partial-legs"
        and fit.schedule.partial
        and fit.nfe == 240 == fit.schedule.steps
    )
    assert fit.partial and not bool(fit.visible[:, LEGS22].any()) and bool(fit.visible.sum(1).eq(14).all())
    assert bool(torch.isfinite(fit.joints).all())
    assert _err(fit.joints, clean, [j for j in range(22) if j not in LEGS22]) < 0.01  # visible: within 1 cm
    # the hidden legs move from the start (zero pose + 0.01 noise, spec §7.5) towards the truth
    straight = pose.clone()
    straight[:, [d for j in LEGS22 for d in range(3 * (j - 1), 3 * j)]] = 0.0
    assert _err(fit.joints, clean, LEGS22) < _err(_joints(body, straight), clean, LEGS22)


def test_nan_observations_count_as_hidden(prior, body, pose):
    clean = _joints(body, pose[:6])
    obs = clean.clone()
    obs[:, LEGS22] = math.nan
    sched = replace(dm.PARTIAL_DEFAULT, steps_per_iter=2)
    fit = dm.denoise_motion(prior, body, obs, schedule=sched, temporal="joints")
    assert not bool(fit.visible[:, LEGS22].any()) and bool(torch.isfinite(fit.params["body_pose"]).all())
    assert dm.pick_schedule(0.04, ()) is dm.PARTIAL_DEFAULT  # hidden joints of no named part
    assert dm.pick_schedule(0.04, ("torso",)) is dm.PARTIAL_DEFAULT  # an alias, but no official recipe
    assert dm.pick_schedule(0.0, ("left_arm",)).name == "motion-partial-left_arm"
    m = dm.motion_metrics(obs, fit.joints, clean, fit.visible, True)  # NaN observations are skipped
    assert m["mpjpe_input_mm"] == 0.0 and math.isfinite(m["mpjpe_occluded_mm"])


def test_world_frame_observations_fit_orientation_and_translation(prior, body, pose):
    orient = torch.tensor([[1.1, 0.4, -0.6]]).expand(FRAMES, 3)
    transl = torch.tensor([[0.5, 1.0, 2.0]]).expand(FRAMES, 3)
    clean = _joints(body, pose, orient, transl)
    noisy = clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    fit = dm.denoise_motion(
        prior,
        body,
        noisy,
        noise_std=0.03,
        world=True,
        temporal="joints",
        generator=torch.Generator().manual_seed(0),
    )
    assert set(fit.params) == {"body_pose", "global_orient", "transl"}
    assert _err(fit.joints, clean) < 0.6 * _err(noisy, clean)


def test_rigid_init_recovers_a_known_placement(body, pose):
    orient = torch.tensor([[0.3, -2.0, 0.7]]).expand(FRAMES, 3)
    transl = torch.tensor([[0.1, -0.4, 3.0]]).expand(FRAMES, 3)
    obs = _joints(body, pose, orient, transl)
    visible = torch.ones(FRAMES, 22, dtype=torch.bool)
    visible[:, dm.hidden_joints(("left_arm",))] = False
    visible[0, 1:] = False  # frame 0: the pelvis alone → identity orientation, translation from the pelvis
    got_orient, got_transl = dm.rigid_init(body, pose, torch.where(visible[..., None], obs, 0.0), visible)
    q, q_true = axis_angle_to_quaternion(got_orient[1:]), axis_angle_to_quaternion(orient[1:])
    assert float((q * q_true).sum(-1).abs().min()) > 1 - 1e-6  # same rotation (q ≡ −q)
    torch.testing.assert_close(got_transl[1:], transl[1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(got_orient[0], torch.zeros(3))
    torch.testing.assert_close(
        _joints(body, pose[:1], None, got_transl[:1])[0, 0], obs[0, 0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "std,name",
    [
        (0.0, "motion-0.02"),
        (0.02, "motion-0.02"),
        (0.03, "motion-0.04"),
        (0.05, "motion-0.04"),
        (0.07, "motion-0.1"),
        (0.5, "motion-0.1"),
    ],
)
def test_schedule_is_the_nearest_official_one_on_a_log_scale(std, name):
    assert dm.pick_schedule(std).name == name


def test_schedules_name_their_time_range_and_weigh_the_official_recipe():
    for sched in (*dm.SCHEDULES.values(), *dm.PARTIAL_SCHEDULES.values(), dm.PARTIAL_DEFAULT):
        assert sched.t_range == T_RANGES[sched.name]
    stages = dm.SCHEDULES[0.04].stages(("body_pose", "global_orient", "transl"))
    assert [s.iters for s in stages] == [60] * 3 and all(not s.reset and s.uses_prior for s in stages)
    assert (
        stages[0].lrs == {"body_pose": 0.03, "global_orient": 0.03, "transl": 0.03} and stages[0].eps == 1e-8
    )
    assert [s.weights["data"] for s in stages] == [100.0, 50.0, 20.0]
    assert [s.weights["temporal"] for s in stages] == [10.0, 20.0, 30.0]
    partial = dm.PARTIAL_SCHEDULES["legs"].stages()
    assert [s.weights["temporal"] for s in partial] == [0.0, 0.0, 20.0] and partial[0].eps == 1e-6
    assert [s.weights["prior"] for s in partial] == pytest.approx([0.4, 0.8, 1.2])
    with pytest.raises(ValueError, match="T_RANGES"):
        dm.MotionSchedule("motion-0.03", 3, 60)


def test_gaussian_smoothing_keeps_edges_and_constants():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    y = dm.gaussian_smooth(x, window=5, sigma=3.0, keep=2)
    torch.testing.assert_close(y[:2], x[:2])
    torch.testing.assert_close(y[-2:], x[-2:])
    assert (y[2:-2] - y[1:-3]).abs().mean() < (x[2:-2] - x[1:-3]).abs().mean()
    c = torch.ones(10, 3)
    torch.testing.assert_close(dm.gaussian_smooth(c), c)


def test_hidden_joints_of_mask_groups():
    assert dm.hidden_joints(("legs",)).nonzero().flatten().tolist() == LEGS22
    shown = ~dm.hidden_joints(visible=("legs",))
    assert shown.nonzero().flatten().tolist() == [0, *LEGS22]  # the pelvis stays visible
    with pytest.raises(InputError, match="did you mean"):
        dm.hidden_joints(("leg",))


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("one_frame", "at least 2"),
        ("shape", r"expected \(T, 22, 3\)"),
        ("all_hidden", "every joint is occluded"),
        ("temporal", "unknown temporal term"),
        ("hand_prior", "needs a body prior"),
    ],
)
def test_bad_inputs_are_input_errors(body, case, pattern):
    obs = torch.zeros(4, 22, 3)
    kw = {}
    prior = NoPrior(Part.body)
    if case == "one_frame":
        obs = obs[:1]
    elif case == "shape":
        obs = torch.zeros(4, 17, 3)
    elif case == "all_hidden":
        kw["visible"] = torch.zeros(22, dtype=torch.bool)
    elif case == "temporal":
        kw["temporal"] = "mesh"
    else:
        prior = NoPrior(Part.hand)
    with pytest.raises(InputError, match=pattern):
        dm.denoise_motion(prior, body, obs, **kw)


@pytest.mark.parametrize("temporal", ["joints", "vertices"])
def test_steps_are_replayed_bit_for_bit(temporal, body, pose, tmp_path_factory, monkeypatch):
    """Steps replayed whole (`StepPlan`) against the same run with every replay off: the same poses to the bit
    and the same count; the steps were replayed (the mesh term's too: it skins a vertex subset)."""
    from dposer_cli.core.trace import TRACE_ENV
    from dposer_cli.engine.prior import DPoserPrior
    from tests._fixtures.priors import write_tiny_prior
    from tests._fixtures.replays import step_calls

    prior = DPoserPrior.load(Part.body, write_tiny_prior(tmp_path_factory.mktemp("p") / "b.pt", Part.body))
    clean = _joints(body, pose[:6])
    noisy = clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))
    sched = replace(dm.SCHEDULES[0.02], steps_per_iter=4)

    def run() -> dm.MotionResult:
        gen = torch.Generator().manual_seed(3)
        return dm.denoise_motion(prior, body, noisy, schedule=sched, temporal=temporal, generator=gen)

    with step_calls() as calls:
        replayed = run()
    monkeypatch.setenv(TRACE_ENV, "0")
    eager = run()
    assert torch.equal(replayed.params["body_pose"], eager.params["body_pose"])
    assert replayed.nfe == eager.nfe == 12
    assert (
        sum(c is not None for c in calls) >= 12 - 3 * 2
    )  # per recording: two warm-up steps and the recording


def test_the_mesh_term_skins_every_kth_vertex_only(body, pose, monkeypatch):
    """The smoothness term's vertices: a uniform subsample (≈ TEMPORAL_VERTICES) passed to the body model as
    `vertex_ids`, so only those are skinned; the term equals its value on the whole mesh's same vertices."""
    nv = body().vertices.shape[-2]
    ids = dm.temporal_vertices(body)
    stride = nv // dm.TEMPORAL_VERTICES
    assert (
        torch.equal(ids, torch.arange(0, nv, stride))
        and dm.TEMPORAL_VERTICES <= len(ids) < 2 * dm.TEMPORAL_VERTICES
    )
    seen = []
    real_call = type(body).__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("vertex_ids"))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(body), "__call__", spy)
    clean = _joints(body, pose[:4])
    sched = replace(dm.SCHEDULES[0.02], steps_per_iter=1)
    dm.denoise_motion(NoPrior(Part.body), body, clean, schedule=sched, temporal="vertices")
    assert any(v is not None and torch.equal(v, ids) for v in seen)
    assert all(v is None or torch.equal(v, ids) for v in seen)
