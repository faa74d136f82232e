"""tasks.sample: samples, NFE, batches, baselines and the recorded trajectory (noise → pose)."""

import pytest
import torch

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.engine.baselines import GaussianMixturePrior, L2Prior
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.samplers import SAMPLERS
from dposer_cli.tasks.sample import frame_steps, sample
from tests._fixtures.priors import write_tiny_prior


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    path = write_tiny_prior(tmp_path_factory.mktemp("prior") / "p.pt", Part.body)
    return DPoserPrior.from_checkpoint(path, Part.body)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_samples_as_the_prior_with_or_without_trajectory(prior, sampler):
    direct = prior.sample(3, sampler=sampler, steps=6, generator=gen())
    plain = sample(prior, 3, sampler=sampler, steps=6, generator=gen())
    traced = sample(prior, 3, sampler=sampler, steps=6, generator=gen(), return_trajectory=True)
    assert torch.equal(plain.poses, direct) and torch.equal(traced.poses, direct)
    assert plain.nfe == 6 and plain.steps == 6 and plain.sampler == sampler and plain.trajectory is None


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_trajectory_runs_from_noise_to_the_returned_samples(prior, sampler):
    res = sample(prior, 4, sampler=sampler, steps=10, generator=gen(1), return_trajectory=True)
    traj = res.trajectory
    assert traj.frames == 11 and traj.x.shape == traj.denoised.shape == (11, 4, 63)
    assert traj.step.tolist() == list(range(11)) and traj.steps == 10
    assert torch.equal(traj.x[-1], res.poses) and torch.equal(traj.denoised[-1], res.poses)
    assert traj.t[0].item() == pytest.approx(1.0) and traj.t[-1].item() == pytest.approx(1e-3)
    assert (traj.t[1:-1] < traj.t[:-2]).all() and traj.t[-1] <= traj.t[-2]  # EM's last grid time is t_end
    # frame 0 is the prior's pure noise, in raw space: denormalised N(0, I)
    noise = prior.sde.prior_sampling((4, 63), gen(1), torch.device("cpu"))
    torch.testing.assert_close(traj.x[0], prior.denormalize(noise))
    assert (traj.x[0] - traj.x[-1]).abs().mean() > 0.05  # noise → pose: the first frame differs from the last


def test_em_1000_trajectory_keeps_the_frame_budget(prior):
    res = sample(prior, 2, sampler="em", steps=1000, generator=gen(), return_trajectory=True, max_frames=90)
    traj = res.trajectory
    assert traj.frames == 90 and res.nfe == 1000
    assert traj.step[0] == 0 and traj.step[-2] == 999 and traj.step[-1] == 1000
    assert (traj.step[1:] > traj.step[:-1]).all()
    assert torch.equal(traj.x[-1], res.poses)


@pytest.mark.parametrize("steps,budget", [(1, 2), (5, 100), (25, 10), (1000, 100), (1000, 2), (7, 8)])
def test_frame_steps_are_spread_and_within_budget(steps, budget):
    keep = frame_steps(steps, budget)
    assert len(keep) == min(steps, budget - 1) and keep[0] == 0
    assert keep[-1] == (steps - 1 if len(keep) > 1 else 0)  # pure noise always; the last step when room
    assert keep == sorted(set(keep)) and all(0 <= k < steps for k in keep)


def test_callback_gets_raw_space_states(prior):
    seen = []
    res = sample(prior, 2, steps=4, generator=gen(), callback=seen.append)
    assert [s.i for s in seen] == [0, 1, 2, 3]
    noise = prior.sde.prior_sampling((2, 63), gen(), torch.device("cpu"))
    torch.testing.assert_close(seen[0].x, prior.denormalize(noise))
    assert seen[-1].denoised.shape == res.poses.shape


def test_batches_concatenate_and_progress_counts_all_steps(prior):
    calls = []
    one = sample(prior, 6, steps=3, generator=gen(), batch_size=6)
    split = sample(
        prior,
        6,
        steps=3,
        generator=gen(),
        batch_size=4,
        progress=lambda d, t: calls.append((d, t)),
        return_trajectory=True,
        trajectory_samples=5,
    )
    assert torch.equal(one.poses, sample(prior, 6, steps=3, generator=gen()).poses)
    assert split.poses.shape == (6, 63) and split.nfe == 6
    assert calls == [(d, 6) for d in range(1, 7)]
    # the trajectory keeps the first 5 samples (4 from batch one, 1 from batch two)
    assert split.trajectory.x.shape == (4, 5, 63) and torch.equal(split.trajectory.x[-1], split.poses[:5])
    # batches draw from the one generator one after the other
    g = gen()
    first, second = prior.sample(4, steps=3, generator=g), prior.sample(2, steps=3, generator=g)
    assert torch.equal(split.poses, torch.cat([first, second]))


def test_baselines_sample_directly_without_trajectory():
    gmm = GaussianMixturePrior(Part.hand, 2, seed=0).fit(0.3 * torch.randn(200, 45, generator=gen()))
    res = sample(gmm, 7, generator=gen(3))
    assert torch.equal(res.poses, gmm.sample(7, generator=gen(3)))
    assert res.nfe == 0 and res.steps == 0 and res.sampler == "gmm"
    with pytest.raises(InputError, match="no sampling trajectory"):
        sample(gmm, 2, return_trajectory=True)
    with pytest.raises((InputError, TypeError)):  # not a SamplingPrior: the type check or the run-time check
        sample(L2Prior(Part.hand), 2)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"n": 0}, "at least 1"),
        ({"n": 2, "sampler": "dpm"}, "unknown sampler 'dpm'"),
        ({"n": 2, "steps": 0}, "steps must be at least 1"),
        ({"n": 2, "batch_size": 0}, "batch size"),
        ({"n": 2, "return_trajectory": True, "max_frames": 1}, "at least 2 frames"),
    ],
)
def test_bad_arguments_are_input_errors(prior, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        sample(prior, **kwargs)
