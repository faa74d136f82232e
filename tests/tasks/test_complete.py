"""`tasks.complete` on tensors: every mode keeps the observed entries, fills the hidden ones plausibly, counts
its network evaluations, and draws distinct hypotheses; it touches no files (run in a read-only directory).

Priors with a known answer: a Gaussian fitted to the training slice of body_reference_train.npz (closed-form ε
inside a real `DPoserPrior`), the analytic 4-d Gaussian of the inpainting tests (DPoserComp recovers its
conditional), and the baselines (L2's closed form, the GMM's exact conditional, VPoser from test weights).
"""

import numpy as np
import pytest
import torch

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part, mask_dims
from dposer_cli.engine.baselines import GaussianMixturePrior, L2Prior, NoPrior
from dposer_cli.engine.vposer import VPoserPrior
from dposer_cli.tasks import complete as tc
from tests._fixtures.vposer import write_vposer
from tests.engine.test_inpaint import OBS, SDE, CountingEps, Y, conditional
from tests.services.test_complete import gaussian_prior

D = 4
TRAIN = slice(0, 7000)
HELD_OUT = slice(7900, 7930)
LEGS = mask_dims(Part.body, ["legs"])


@pytest.fixture(autouse=True)
def read_only_cwd(tmp_path_factory, monkeypatch):
    """The task writes nothing: it runs in a directory nobody can write to."""
    cwd = tmp_path_factory.mktemp("ro")
    cwd.chmod(0o555)
    monkeypatch.chdir(cwd)
    yield cwd
    cwd.chmod(0o755)


@pytest.fixture(scope="module")
def reference(shared_data_module):
    return torch.as_tensor(
        np.load(shared_data_module / "poses" / "body_reference_train.npz")["poses"], dtype=torch.float32
    )


@pytest.fixture(scope="module")
def shared_data_module():
    from dposer_cli.core.paths import shared_data_dir

    path = shared_data_dir()
    if not (path / "poses" / "body_reference_train.npz").is_file():
        pytest.skip("../shared/data not present")
    return path


@pytest.fixture(scope="module")
def prior(reference):
    return gaussian_prior(reference[TRAIN].numpy())


def _legs_hidden(n: int) -> torch.Tensor:
    observed = torch.ones(n, 63, dtype=torch.bool)
    observed[:, list(LEGS)] = False
    return observed


def _check_layout(res: tc.CompleteResult, poses: torch.Tensor, observed: torch.Tensor, hypo: int) -> None:
    """(N, H, D), observed entries bit for bit, hidden entries finite, hypotheses distinct."""
    out = res.poses
    assert out.shape == (len(poses), hypo, poses.shape[1])
    vis = observed[:, None].expand_as(out)
    assert torch.equal(out[vis], poses[:, None].expand_as(out)[vis])
    assert torch.isfinite(out).all()
    if hypo > 1:
        spread = out.std(1)  # (N, D) over hypotheses
        assert (spread.masked_fill(observed, 0).amax(1) > 0).all()  # every pose: no two hypotheses alike
        assert spread[observed].abs().max() == 0


def _plausible(out: torch.Tensor, truth: torch.Tensor, train: torch.Tensor, dims: tuple[int, ...]) -> None:
    """Hidden dims look like real poses: inside the training range, closer to some training pose than
    independent per-dim draws from the training marginals are (the joints are coordinated), and (best of H)
    closer to the truth than the training mean."""
    sel = list(dims)
    hidden = out[..., sel]  # (N, H, M)
    lo, hi = train[:, sel].min(0).values, train[:, sel].max(0).values
    margin = 0.1 * (hi - lo)
    assert ((hidden >= lo - margin) & (hidden <= hi + margin)).float().mean() > 0.99
    rows = torch.randint(
        len(train), (hidden.shape[0] * hidden.shape[1], len(sel)), generator=torch.Generator().manual_seed(0)
    )
    shuffled = train[:, sel][rows, torch.arange(len(sel))]

    def nearest(x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.reshape(-1, len(sel)), train[:, sel]).min(1).values.mean()

    assert nearest(hidden) < 0.85 * nearest(shuffled), (nearest(hidden), nearest(shuffled))
    err = (hidden - truth[:, None, sel]).norm(dim=-1)  # (N, H)
    err_mean = (train[:, sel].mean(0) - truth[:, sel]).norm(dim=-1)
    assert err.min(1).values.mean() < 0.8 * err_mean.mean()


# ---- DPoser prior, every mode ----------------------------------------------------------------------------
def test_dposer_mode_fills_hidden_legs_plausibly_and_counts_its_steps(prior, reference):
    truth = reference[HELD_OUT]
    observed = _legs_hidden(len(truth))
    calls = []
    res = tc.complete(
        prior,
        truth,
        observed,
        hypo=4,
        generator=torch.Generator().manual_seed(0),
        progress=lambda done, total: calls.append((done, total)),
    )
    _check_layout(res, truth, observed, 4)
    assert res.mode == "dposer" and res.steps == 200 and res.nfe == 200  # spec §11 default, 1 NFE per step
    assert calls[-1] == (200, 200) and len(calls) == 200
    _plausible(res.poses, truth, reference[TRAIN], LEGS)
    assert res.poses[..., list(LEGS)].std(1).mean() > 0.05  # hypotheses spread (radians), not one answer


def test_dposer_mode_replays_its_steps_bit_for_bit(prior, reference, monkeypatch):
    """DPoserComp's steps replayed whole (`StepPlan`) against the same run with every replay off: the same
    poses to the bit, the same count, and the steps were replayed."""
    from dposer_cli.core.trace import TRACE_ENV
    from tests._fixtures.replays import step_calls

    truth, observed = reference[HELD_OUT][:3], _legs_hidden(3)
    with step_calls() as calls:
        replayed = tc.complete(
            prior, truth, observed, hypo=3, steps=20, generator=torch.Generator().manual_seed(0)
        )
    monkeypatch.setenv(TRACE_ENV, "0")
    eager = tc.complete(prior, truth, observed, hypo=3, steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(replayed.poses, eager.poses) and replayed.nfe == eager.nfe == 20
    assert sum(c is not None for c in calls) == 20 - 3  # recorded on the third step, replayed from the fourth


@pytest.mark.parametrize("mode", ["scoresde", "dps", "mcg"])
def test_inpainting_modes_keep_observed_and_make_one_network_call_per_step(prior, reference, mode):
    truth = reference[HELD_OUT][:6]
    observed = _legs_hidden(len(truth))
    res = tc.complete(
        prior, truth, observed, hypo=3, mode=mode, steps=30, generator=torch.Generator().manual_seed(1)
    )
    _check_layout(res, truth, observed, 3)
    assert res.nfe == 30 and res.steps == 30 and res.mode == mode


def test_dposer_steps_are_split_evenly_over_the_outer_iterations(prior, reference):
    truth = reference[HELD_OUT][:2]
    res = tc.complete(prior, truth, _legs_hidden(2), steps=7, generator=torch.Generator().manual_seed(2))
    assert res.steps == 8 and res.nfe == 8 and tc.solver_steps("dposer", 7) == 8


def test_hidden_entries_are_never_read_so_nan_gives_the_same_result(prior, reference):
    truth = reference[HELD_OUT][:5]
    observed = _legs_hidden(5)
    holes = truth.clone()
    holes[~observed] = float("nan")
    a = tc.complete(prior, truth, observed, hypo=2, steps=10, generator=torch.Generator().manual_seed(3))
    b = tc.complete(prior, holes, observed, hypo=2, steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.poses[..., list(LEGS)], b.poses[..., list(LEGS)])
    # a (D,) mask broadcasts over the poses
    c = tc.complete(prior, holes, observed[0], hypo=2, steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b.poses, c.poses)


def test_per_row_nan_masks_from_resolve_masking(prior, reference):
    truth = reference[HELD_OUT][:6].clone()
    rng = np.random.default_rng(0)
    holes = torch.as_tensor(rng.random(truth.shape) < 0.3)
    holes[:, 0] = False
    truth[holes] = float("nan")
    masking = tc.resolve_masking(Part.body, truth)
    assert masking.source == "nan" and not masking.has_truth and torch.equal(masking.observed, ~holes)
    res = tc.complete(
        prior, truth, masking.observed, hypo=2, steps=6, generator=torch.Generator().manual_seed(4)
    )
    _check_layout(res, torch.nan_to_num(truth), masking.observed, 2)


def test_runs_larger_than_a_chunk_count_every_batched_run(prior, reference, monkeypatch):
    monkeypatch.setattr(tc, "CHUNK", 6)  # 3 hypotheses → 2 poses per run → 3 runs for 5 poses
    truth = reference[HELD_OUT][:5]
    res = tc.complete(
        prior, truth, _legs_hidden(5), hypo=3, steps=4, generator=torch.Generator().manual_seed(5)
    )
    _check_layout(res, truth, _legs_hidden(5), 3)
    assert res.nfe == 3 * 4


def test_bad_options_raise_one_line_input_errors(prior, reference):
    truth = reference[HELD_OUT][:2]
    for kwargs, pattern in [
        ({"mode": "dpoer"}, "did you mean 'dposer'"),
        ({"hypo": 0}, "--hypo must be at least 1"),
        ({"steps": 0}, "--steps must be at least 1"),
    ]:
        with pytest.raises(InputError, match=pattern):
            tc.complete(prior, truth, _legs_hidden(2), **kwargs)
    with pytest.raises(InputError, match=r"expected \(N, 63\)"):
        tc.complete(prior, truth[:, :45], _legs_hidden(2)[:, :45])


# ---- DPoserComp in normalised space (analytic Gaussian; moved from tests/engine/test_inpaint.py) -------------
def test_dposer_complete_recovers_gaussian_conditional_and_keeps_observed_exactly():
    g = torch.Generator().manual_seed(1)
    n = 1000
    x0 = torch.where(OBS, torch.nan_to_num(Y), torch.randn(n, D, generator=g))
    eps = CountingEps()
    out, nfe = tc.dposer_complete(eps, x0, OBS, Y, sde=SDE, generator=g, iterations=2, steps_per_iter=100)
    mean, std = conditional()
    assert eps.calls == 200 and nfe == 200  # one batched evaluation per step, whatever the batch
    assert torch.equal(out[:, OBS], Y[OBS].expand(n, 2))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, ~OBS].mean(0), mean, atol=0.12, rtol=0)
    # hypotheses spread like the posterior, not collapsed onto its mean
    assert (out[:, ~OBS].std(0) > 0.6 * std).all() and (out[:, ~OBS].std(0) < 1.4 * std).all()


def test_dposer_complete_same_result_for_hypothesis_layout_and_flat_batch():
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(2))
    mask = OBS.expand(3, 5, D)
    y = torch.randn(3, 1, D, generator=torch.Generator().manual_seed(3))
    kw = {"sde": SDE, "iterations": 2, "steps_per_iter": 10}
    a, _ = tc.dposer_complete(CountingEps(), x, mask, y, generator=torch.Generator().manual_seed(4), **kw)
    b, _ = tc.dposer_complete(
        CountingEps(),
        x.reshape(15, D),
        mask.reshape(15, D),
        y.expand(3, 5, D).reshape(15, D),
        generator=torch.Generator().manual_seed(4),
        **kw,
    )
    torch.testing.assert_close(a.reshape(15, D), b)


def test_dposer_complete_moves_masked_dims_towards_conditional_mean_from_noise():
    """Per hypothesis: the optimisation pulls the noise start towards the conditional (less error than the start)."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.where(OBS, torch.nan_to_num(Y), torch.randn(400, D, generator=g) * 3)
    out, _ = tc.dposer_complete(CountingEps(), x0, OBS, Y, sde=SDE, generator=g, steps_per_iter=50)
    mean, _ = conditional()
    before = (x0[:, ~OBS] - mean).norm(dim=-1).mean()
    after = (out[:, ~OBS] - mean).norm(dim=-1).mean()
    assert after < 0.6 * before


def test_completion_stages_are_one_adam_run_with_the_official_weights():
    stages = tc.completion_stages(2, 100)
    assert [(s.iters, dict(s.weights)) for s in stages] == [
        (100, {"data": 100.0, "prior": 0.1}),
        (100, {"data": 50.0, "prior": 0.2}),
    ]
    assert all(
        not s.reset and s.uses_prior and s.betas == (0.9, 0.99) and dict(s.lrs) == {"x": 0.1} for s in stages
    )


# ---- baseline priors --------------------------------------------------------------------------------------
def test_l2_baseline_puts_hidden_joints_at_zero_without_network_calls(reference):
    truth = reference[HELD_OUT][:4]
    res = tc.complete(L2Prior(Part.body), truth, _legs_hidden(4), hypo=2)
    assert res.nfe == 0 and res.poses.shape == (4, 2, 63)
    assert res.poses[..., list(LEGS)].abs().max() == 0
    with pytest.raises(InputError, match="--mode scoresde needs the DPoser prior"):
        tc.complete(L2Prior(Part.body), truth, _legs_hidden(4), mode="scoresde")
    with pytest.raises(InputError, match="cannot complete"):
        tc.complete(NoPrior(Part.body), truth, _legs_hidden(4))


def test_gmm_baseline_samples_plausible_distinct_hypotheses_per_mask_pattern(reference):
    gmm = GaussianMixturePrior(Part.body, 4, seed=0).fit(reference[:2000])
    truth = reference[HELD_OUT]
    observed = _legs_hidden(len(truth))
    res = tc.complete(gmm, truth, observed, hypo=4, generator=torch.Generator().manual_seed(6))
    _check_layout(res, truth, observed, 4)
    _plausible(res.poses, truth, reference[:2000], LEGS)
    # rows with different masks: each pattern is completed with its own mask
    mixed = observed.clone()
    mixed[::2] = True
    mixed[::2, :6] = False
    out = tc.complete(gmm, truth, mixed, hypo=2, generator=torch.Generator().manual_seed(7))
    _check_layout(out, truth, mixed, 2)


def test_vposer_baseline_through_the_task_is_its_own_completion(tmp_path_factory):
    vposer = VPoserPrior.load(write_vposer(tmp_path_factory.mktemp("vp")))
    truth = vposer.decode(torch.randn(3, 8, generator=torch.Generator().manual_seed(4)))
    observed = torch.ones(63, dtype=torch.bool)
    observed[:9] = False
    res = tc.complete(
        vposer, truth, observed.expand(3, 63), hypo=2, generator=torch.Generator().manual_seed(5)
    )
    own = vposer.complete(truth, observed, hypo=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(res.poses, own) and res.nfe == 0
    _check_layout(res, truth, observed.expand(3, 63), 2)


def test_a_mask_that_moves_none_of_its_own_joints_is_scored_on_the_joints_it_moves():
    """Body `hands` rotates the wrists: the wrist joints never move, so their MPJPE would be a perfect 0 whatever
    the completion; the metric is taken over the hand joints the rotations move instead (issue #17)."""
    from dposer_cli.bodies import load_body
    from dposer_cli.tasks.complete import completion_metrics, resolve_masking

    body = load_body("body")
    truth = torch.zeros(3, 63)
    masking = resolve_masking(Part.body, truth, masks=("hands",))
    wrong = truth.clone()[:, None].repeat(1, 2, 1)
    wrong[..., list(masking.dims)] = 0.8  # far-off wrist rotations
    metrics, info = completion_metrics(Part.body, wrong, truth, masking.dims, body)
    assert metrics["mpjpe_min_mm"] > 5.0
    assert "wrist" not in " ".join(info["metric_joints"]) and "joints they move" in info["metric_note"]
    exact, _ = completion_metrics(Part.body, truth[:, None].repeat(1, 2, 1), truth, masking.dims, body)
    assert exact["mpjpe_min_mm"] == 0.0
