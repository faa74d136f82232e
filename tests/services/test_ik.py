"""`services.ik` + `tasks.ik`: official masks and schedules, the batched solve, metrics, targets files, and the
prior beating baselines."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dposer_cli.bodies import load_body
from dposer_cli.bodies.kinematics import batch_rodrigues
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import demo_checkpoint
from dposer_cli.engine.baselines import NoPrior
from dposer_cli.engine.optimize import T_RANGES
from dposer_cli.services import ik as svc
from dposer_cli.tasks import ik
from tests._fixtures.body_models import write_flame
from tests._fixtures.priors import write_tiny_prior

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def hand():
    return load_body("hand", None, CPU)  # the built-in mannequin hand unless a MANO is installed


@pytest.fixture(scope="module")
def hand_poses():
    from dposer_cli.core.paths import shared_data_dir

    path = shared_data_dir() / "poses" / "hand_reference_train.npz"
    if not path.is_file():
        pytest.skip("../shared/data/poses/hand_reference_train.npz not present")
    poses = np.load(path)["poses"]
    return poses[np.random.default_rng(0).choice(len(poses), 24, replace=False)]


@pytest.fixture(scope="module")
def hand_problem(tmp_path_factory, hand, hand_poses):
    path = tmp_path_factory.mktemp("ik") / "gt.npz"
    np.savez(path, hand_pose=hand_poses)
    return svc.load_problem(path, Part.hand, hand, CPU)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def prior(kind, part=Part.hand, priors=None):
    """The prior of a solve as the service builds it (None for `none`; l2 is 0.5·‖θ‖²)."""
    if kind == "none":
        return None
    priors = priors if kind == "dposer" else svc.load_priors(part, kind=kind)
    return ik.ik_prior(part, priors, scale=ik.PRIOR_SCALES.get(kind, 1.0))


# ---------------------------------------------------------------------------------------------- masks
def test_sparse_hides_13_joints_per_sample_with_a_different_seeded_mask_each(hand_problem):
    a = ik.apply_type(hand_problem, "sparse", generator=gen(1))
    b = ik.apply_type(hand_problem, "sparse", generator=gen(1))
    assert ((~a.visible).sum(-1) == 13).all()
    assert torch.equal(a.visible, b.visible)  # seeded
    assert len({tuple(v.tolist()) for v in a.visible}) > len(a.visible) // 2  # per sample, not per batch
    assert torch.equal(a.targets, hand_problem.targets)


def test_fingertip_keeps_only_wrist_and_tips_and_partial_hides_two_whole_fingers(hand_problem):
    tips = ik.apply_type(hand_problem, "fingertip", generator=gen())
    assert (tips.visible.nonzero()[:, 1].reshape(-1, 6) == torch.tensor([0, 4, 8, 12, 16, 20])).all()
    part = ik.apply_type(hand_problem, "partial", generator=gen())
    hidden = ~part.visible
    assert (hidden.sum(-1) == 8).all() and part.visible[:, 0].all()
    per_finger = hidden[:, 1:].reshape(-1, 5, 4)
    assert (per_finger.all(-1) == per_finger.any(-1)).all()  # each finger fully hidden or fully visible
    assert (per_finger.all(-1).sum(-1) == 2).all()


def test_noisy_adds_gaussian_noise_of_the_requested_std_on_all_joints(hand_problem):
    noisy = ik.apply_type(hand_problem, "noisy", noise_std=0.01, generator=gen())
    diff = noisy.targets - hand_problem.targets
    assert noisy.visible.all()
    assert diff.std().item() == pytest.approx(0.01, rel=0.05) and abs(diff.mean().item()) < 1e-3


def test_face_masks_hide_the_official_landmark_sets():
    problem = ik.IKProblem(Part.face, torch.zeros(64, 73, 3), torch.ones(64, 73, dtype=torch.bool))
    left = ik.apply_type(problem, "left_face")
    assert set((~left.visible[0]).nonzero()[:, 0].tolist()) == set(ik.LEFT_FACE)
    half = ik.apply_type(problem, "half_face", generator=gen())
    sides = [set((~v).nonzero()[:, 0].tolist()) for v in half.visible]
    assert all(s in (set(ik.LEFT_FACE), set(ik.RIGHT_FACE)) for s in sides)
    assert len({frozenset(s) for s in sides}) == 2  # a random side per sample
    assert not set(ik.LEFT_FACE) & set(ik.RIGHT_FACE) and max(ik.LEFT_FACE + ik.RIGHT_FACE) < 73


def test_types_of_the_other_part_and_fully_hidden_samples_are_rejected(hand_problem):
    with pytest.raises(InputError, match="not available for --part hand"):
        ik.apply_type(hand_problem, "half_face")
    hidden = replace(hand_problem, visible=hand_problem.visible.clone())
    hidden.visible[3, [0, 4, 8, 12, 16, 20]] = False
    with pytest.raises(InputError, match="sample 3 has no visible joints"):
        ik.apply_type(hidden, "fingertip")


# ---------------------------------------------------------------------------------------------- schedules
def _weight(stages, key, step):
    """The stage weight `key` at Adam step `step` (stages run in order)."""
    for stage in stages:
        if step < stage.iters:
            return stage.weights[key]
        step -= stage.iters
    raise IndexError(step)


def test_schedules_follow_the_official_weights():
    s = ik.ik_stages(Part.hand, "sparse")
    assert sum(st.iters for st in s) == 300 and len(s) == 10 and not any(st.reset for st in s)
    t = ik.ik_prior_schedule(Part.hand, "sparse", NoPrior(Part.hand)).t
    assert t(0, 300) == pytest.approx(0.05 + 299 / 300 * 0.15) and t(299, 300) == pytest.approx(0.05)
    assert _weight(s, "data", 0) == 100 and _weight(s, "data", 299) == 1000
    assert _weight(s, "prior", 0) == pytest.approx(0.1) and _weight(s, "prior", 299) == pytest.approx(0.01)
    n = ik.ik_stages(Part.hand, "noisy", noise_std=0.005)
    assert ik.ik_prior_schedule(Part.hand, "noisy", NoPrior(Part.hand)).t(0, 300) < 0.15
    assert _weight(n, "data", 299) == 10 and _weight(n, "prior", 299) == pytest.approx(0.05)
    assert _weight(ik.ik_stages(Part.hand, "noisy", noise_std=0.003), "prior", 0) == pytest.approx(0.1)
    f = ik.ik_stages(Part.face, "half_face")
    assert sum(st.iters for st in f) == 200 and _weight(f, "prior", 0) == pytest.approx(1e-4)
    assert ik.ik_prior_schedule(Part.face, "half_face", NoPrior(Part.face)).t(0, 200) > 0.19
    assert _weight(ik.ik_stages(Part.face, "noisy"), "prior", 0) == pytest.approx(0.001)  # 0.002 → ×1.0
    short = ik.ik_stages(Part.hand, "sparse", steps=25)
    assert [_weight(short, "data", k) for k in (0, 2, 3, 24)] == [100, 100, 200, 1000]  # iterations 0,0,1,9
    assert [st.iters for st in short] == [3, 2, 3, 2, 3, 2, 3, 2, 3, 2]


def test_time_ranges_are_the_named_entries_of_the_one_table():
    assert T_RANGES["ik-hand-masked"] == (0.05, 0.20) and T_RANGES["ik-hand-noisy"] == (0.05, 0.15)
    assert T_RANGES["ik-face-masked"] == (0.05, 0.20) and T_RANGES["ik-face-noisy"] == (0.05, 0.20)
    for part, spec in ik.IK.items():
        for ik_type in spec.types:
            kind = "noisy" if ik_type == "noisy" else "masked"
            assert spec.weights(ik_type).t_range == f"ik-{part.value}-{kind}"


# ---------------------------------------------------------------------------------------------- solving
def test_hidden_joint_values_never_reach_the_solution(hand_problem, hand):
    problem = ik.apply_type(hand_problem, "sparse", generator=gen())
    garbage = torch.where(problem.visible[..., None], problem.targets, torch.full_like(problem.targets, 1e3))
    a = ik.solve_ik(problem, hand, prior("l2"), ik_type="sparse", steps=15, generator=gen())
    b = ik.solve_ik(
        replace(problem, targets=garbage), hand, prior("l2"), ik_type="sparse", steps=15, generator=gen()
    )
    assert torch.equal(a.params["hand_pose"], b.params["hand_pose"])


def test_full_targets_are_reached_and_the_metrics_agree_with_a_direct_computation(hand_problem, hand):
    res = ik.solve_ik(hand_problem, hand, None, ik_type="full", generator=gen())
    m = ik.evaluate_ik(hand_problem, hand, res)
    direct = 1000 * (res.joints - hand_problem.gt["joints"]).norm(dim=-1).mean()
    assert m["mpjpe_all_mm"] == pytest.approx(float(direct), rel=1e-5)
    assert m["mpjpe_all_mm"] < 1.0 and m["mpvpe_mm"] < 3.0 and "mpjpe_occluded_mm" not in m
    assert res.params["hand_pose"].shape == (24, 45) and res.joints.shape == (24, 21, 3)
    assert res.nfe == 0 and res.steps == 300


def test_solve_orient_recovers_rotated_and_shifted_hands(hand_problem, hand):
    g = gen(5)
    rot = batch_rodrigues(torch.randn(24, 3, generator=g))
    shift = 0.3 * torch.randn(24, 1, 3, generator=g)
    moved = replace(hand_problem, targets=hand_problem.targets @ rot.transpose(-1, -2) + shift, gt=None)
    res = ik.solve_ik(moved, hand, None, ik_type="full", steps=150, solve_orient=True, generator=gen())
    assert ik.evaluate_ik(moved, hand, res)["target_error_mm"] < 2.0
    assert {"global_orient", "transl"} <= set(res.params)


def test_face_ik_on_a_flame_fixture_with_real_expressions(tmp_path, shared_data):
    write_flame(tmp_path / "flame")
    face = load_body("face", tmp_path / "flame", CPU)
    poses = np.load(shared_data / "poses" / "face_expression_reference_train.npz")["poses"][:12]
    np.savez(tmp_path / "gt.npz", poses=poses)
    problem = ik.apply_type(
        svc.load_problem(tmp_path / "gt.npz", Part.face, face, CPU), "half_face", generator=gen()
    )
    assert problem.targets.shape == (12, 73, 3) and torch.allclose(
        problem.gt["jaw_pose"], torch.tensor(poses[:, :3])
    )
    priors = svc.load_priors(
        Part.face,
        write_tiny_prior(tmp_path / "f.pt", Part.face),
        shape_checkpoint=write_tiny_prior(tmp_path / "s.pt", Part.face_shape),
    )
    res = ik.solve_ik(
        problem, face, prior("dposer", Part.face, priors), ik_type="half_face", steps=40, generator=gen()
    )
    assert {k: tuple(v.shape) for k, v in res.params.items()} == {
        "betas": (12, 100),
        "expression": (12, 100),
        "jaw_pose": (12, 3),
    } and res.joints.shape == (12, 73, 3)
    assert res.nfe == 80 and sum(p.nfe for p in priors.values()) == 80  # two networks per step (spec §11)
    zeros = {k: torch.zeros_like(v) for k, v in res.params.items()}
    zero = ik.IKResult(zeros, face(**zeros).joints, 0, 0)
    before, after = ik.evaluate_ik(problem, face, zero), ik.evaluate_ik(problem, face, res)
    assert after["mpjpe_visible_mm"] < 0.5 * before["mpjpe_visible_mm"]
    assert after["mpjpe_occluded_mm"] < before["mpjpe_occluded_mm"]


# ---------------------------------------------------------------------------------------------- targets files
def test_targets_files_are_validated(tmp_path, hand):
    def load(**arrays):
        np.savez(tmp_path / "t.npz", **arrays)
        return svc.load_problem(tmp_path / "t.npz", Part.hand, hand, CPU)

    joints = np.zeros((2, 21, 3), np.float32)
    with pytest.raises(InputError, match=r"joints has shape \(2, 17, 3\); expected \(N, 21, 3\).*hand21"):
        load(joints=np.zeros((2, 17, 3)))
    nan = joints.copy()
    nan[1, 5] = np.nan
    with pytest.raises(InputError, match="NaN or infinite values at sample 1, joint 5"):
        load(joints=nan)
    visible = np.ones((2, 21), bool)
    visible[1, 5] = False
    problem = load(joints=nan, visible=visible)  # NaN at a hidden joint is fine
    assert torch.isfinite(problem.targets).all() and not problem.visible[1, 5]
    with pytest.raises(InputError, match="visible has shape"):
        load(joints=joints, visible=np.ones((2, 20), bool))
    with pytest.raises(InputError, match="holds none of the keys"):
        load(body_pose=np.zeros((2, 63)))
    with pytest.raises(InputError, match=r"hand_pose has shape \(2, 44\)"):
        load(hand_pose=np.zeros((2, 44)))
    with pytest.raises(InputError, match="not found"):
        svc.load_problem(tmp_path / "nope.npz", Part.hand, hand, CPU)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        svc.load_problem(tmp_path / "bad.npz", Part.hand, hand, CPU)


# ---------------------------------------------------------------------------------------------- the prior helps
@pytest.fixture(scope="module")
def demo_hand_prior():
    """The bundled demo hand prior ($DPOSER_TEST_HAND_PRIOR overrides it, e.g. with a training checkpoint)."""
    path = Path(os.environ.get("DPOSER_TEST_HAND_PRIOR") or demo_checkpoint(Part.hand))
    if not path.is_file():
        pytest.skip(
            f"no trained hand prior at {path} (the bundled demo prior): prior-vs-baseline comparison skipped"
        )
    return svc.load_priors(Part.hand, path)


@pytest.mark.parametrize("ik_type", ["sparse", "fingertip"])
def test_dposer_prior_beats_no_prior_and_l2_on_occluded_joints(hand_problem, hand, demo_hand_prior, ik_type):
    errors = {}
    for kind in ik.PRIORS:
        problem = ik.apply_type(hand_problem, ik_type, generator=gen(7))
        res = ik.solve_ik(
            problem,
            hand,
            prior(kind, Part.hand, demo_hand_prior),
            ik_type=ik_type,
            steps=120,
            generator=gen(9),
        )
        errors[kind] = ik.evaluate_ik(problem, hand, res)["mpjpe_occluded_mm"]
    assert errors["dposer"] < 0.9 * min(errors["none"], errors["l2"]), errors
