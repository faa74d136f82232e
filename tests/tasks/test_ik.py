"""`tasks.ik` on tensors: known poses of the default hand are recovered, masks keep visible joints close, the
NFE comes from the optimiser, and the face's two priors are summed on their slices. No files are read or
written (the tests run in a read-only working directory)."""

import pytest
import torch

from dposer_cli.bodies import load_body
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import demo_checkpoint
from dposer_cli.engine.baselines import L2Prior, NoPrior
from dposer_cli.engine.priors import build_prior
from dposer_cli.tasks import ik


@pytest.fixture
def read_only_cwd(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.chdir(ro)
    yield ro
    ro.chmod(0o755)


@pytest.fixture
def hand(read_only_cwd):
    return load_body("hand", None, "cpu")  # the built-in mannequin hand unless a MANO is installed


@pytest.fixture
def known(hand):
    """Targets from known hand poses: every joint visible, ground truth kept for the metrics."""
    poses = 0.25 * torch.randn(6, 45, generator=torch.Generator().manual_seed(0))
    return ik.problem_from_params(Part.hand, hand, {"hand_pose": poses})


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_visibility_recovers_the_joints_of_known_poses(known, hand, read_only_cwd):
    result = ik.solve_ik(known, hand, None, ik_type="full", steps=150, generator=gen())
    m = ik.evaluate_ik(known, hand, result)
    assert m["mpjpe_all_mm"] < 1.0 and m["mpvpe_mm"] < 3.0 and "mpjpe_occluded_mm" not in m
    assert result.nfe == 0 and result.steps == 150
    assert result.joints.shape == (6, 21, 3) and result.params["hand_pose"].shape == (6, 45)
    assert set(result.params) == {"hand_pose", "global_orient", "betas"}  # a complete parameter set
    assert list(read_only_cwd.iterdir()) == []


@pytest.mark.parametrize("ik_type", ["sparse", "fingertip", "partial"])
def test_masked_types_keep_the_visible_joints_close_and_count_one_network_per_step(known, hand, ik_type):
    prior = build_prior("dposer", Part.hand, checkpoint=demo_checkpoint(Part.hand))
    problem = ik.apply_type(known, ik_type, generator=gen(1))
    assert not problem.visible.all()
    result = ik.solve_ik(problem, hand, prior, ik_type=ik_type, steps=40, generator=gen(2))
    m = ik.evaluate_ik(problem, hand, result)
    assert result.nfe == 40  # the hand prior: one network evaluation per Adam step
    assert m["mpjpe_visible_mm"] < 2.0 and m["mpjpe_occluded_mm"] < 30.0
    again = ik.solve_ik(problem, hand, prior, ik_type=ik_type, steps=40, generator=gen(2))
    assert torch.equal(again.params["hand_pose"], result.params["hand_pose"])  # seeded


def test_noisy_targets_are_fitted_to_about_the_noise_level(known, hand):
    problem = ik.apply_type(known, "noisy", noise_std=0.002, generator=gen(1))
    l2 = ik.ik_prior(Part.hand, {Part.hand: L2Prior(Part.hand)}, scale=ik.PRIOR_SCALES["l2"])
    result = ik.solve_ik(problem, hand, l2, ik_type="noisy", noise_std=0.002, steps=60, generator=gen())
    m = ik.evaluate_ik(problem, hand, result)
    # ≈ the noise's norm (2 mm per axis) from the targets, closer than that to the ground truth
    assert result.nfe == 0 and m["target_error_mm"] < 5.0
    assert m["mpjpe_all_mm"] < min(4.0, m["target_error_mm"])


def test_the_stages_are_one_adam_run_with_the_official_outer_iterations():
    stages = ik.ik_stages(Part.hand, "sparse", steps=300, solve_orient=True)
    assert [s.iters for s in stages] == [30] * 10 and all(not s.reset and s.uses_prior for s in stages)
    assert [s.weights["data"] for s in stages] == [100.0 * (1 + i) for i in range(10)]
    assert stages[0].lrs == {"hand_pose": 0.05, "global_orient": 0.05, "transl": 0.01}
    assert len(ik.ik_stages(Part.face, "noisy", steps=4)) == 4  # fewer steps than iterations: one step each


def test_the_face_prior_sums_its_two_priors_on_their_slices():
    prior = ik.ik_prior(
        Part.face, {Part.face: L2Prior(Part.face), Part.face_shape: L2Prior(Part.face_shape)}, scale=0.5
    )
    x = torch.randn(5, 203, generator=gen())
    expected = 0.5 * (x[:, :103] ** 2).sum(-1) + 0.5 * (x[:, 103:] ** 2).sum(-1)
    torch.testing.assert_close(prior.loss(x, 0.1), expected)
    assert prior.parts == (Part.face, Part.face_shape) and prior.widths == (103, 100)
    assert prior.nfe_per_call == 0
    with pytest.raises(InputError, match="needs a prior for face-shape"):
        ik.ik_prior(Part.face, {Part.face: NoPrior(Part.face)})


def test_a_prior_of_the_wrong_part_and_parts_without_ik_are_rejected(known, hand):
    with pytest.raises(InputError, match="needs a prior of hand, got face"):
        ik.solve_ik(known, hand, NoPrior(Part.face), steps=1)
    with pytest.raises(InputError, match="not available for --part hand"):
        ik.solve_ik(known, hand, None, ik_type="half_face", steps=1)
    with pytest.raises(InputError, match="supports --part hand or face"):
        ik.part_ik(Part.body)


def test_the_concatenated_prior_passes_prepared_times_to_its_diffusion_priors():
    from dposer_cli.engine.prior import DPoserPrior

    face, shape = DPoserPrior.load(Part.face), DPoserPrior.load(Part.face_shape)
    prior = ik.ik_prior(Part.face, {Part.face: face, Part.face_shape: shape})
    x = torch.randn(3, 203, generator=gen()) * 0.3
    plain = [
        prior.loss(x, t, generator=torch.Generator().manual_seed(k)) for k, t in enumerate((0.1, 0.05) * 2)
    ]
    prior.prepare_times([0.05, 0.1])
    assert set(face._prepared) == set(shape._prepared) == {0.05, 0.1}
    prepared = [
        prior.loss(x, t, generator=torch.Generator().manual_seed(k)) for k, t in enumerate((0.1, 0.05) * 2)
    ]
    for a, b in zip(plain, prepared, strict=True):
        assert torch.equal(a, b)
    prior.prepare_times(None)
    assert not face._prepared and not shape._prepared


@pytest.mark.parametrize("part", [Part.hand, Part.face])
def test_replayed_steps_give_the_eager_solve_bit_for_bit(part, known, hand, tmp_path, monkeypatch):
    """IK steps replayed whole (`StepPlan`) against the same solve with every replay off: the same parameters to
    the bit (the face: FLAME and two priors whose noise is drawn part by part) and the replays did run."""
    from dposer_cli.core.trace import TRACE_ENV
    from dposer_cli.engine.prior import DPoserPrior
    from tests._fixtures.body_models import write_flame
    from tests._fixtures.replays import step_calls

    if part is Part.hand:
        body, prior = hand, build_prior("dposer", Part.hand, checkpoint=demo_checkpoint(Part.hand))
        problem = ik.apply_type(known, "partial", generator=gen(1))
    else:
        body = load_body("face", write_flame(tmp_path / "flame"), "cpu")
        priors = {p: DPoserPrior.load(p) for p in (Part.face, Part.face_shape)}
        prior = ik.ik_prior(Part.face, priors)
        truth = {"expression": 0.5 * torch.randn(3, 100, generator=gen(3)), "jaw_pose": torch.zeros(3, 3)}
        problem = ik.problem_from_params(Part.face, body, truth)
    with step_calls() as calls:
        replayed = ik.solve_ik(problem, body, prior, ik_type="partial" if part is Part.hand else "full", steps=12,
                               generator=gen(2))  # fmt: skip
    monkeypatch.setenv(TRACE_ENV, "0")
    eager = ik.solve_ik(problem, body, prior, ik_type="partial" if part is Part.hand else "full", steps=12,
                        generator=gen(2))  # fmt: skip
    for key, value in eager.params.items():
        assert torch.equal(replayed.params[key], value), key
    assert replayed.nfe == eager.nfe == 12 * prior.nfe_per_call
    assert sum(c is not None for c in calls) == 12 - 3  # recorded on the third step, replayed from the fourth
