"""engine.optimize's Adam is torch.optim.Adam's arithmetic, and the stage loop keeps/reset its state as documented."""

import pytest
import torch

from dposer_cli.engine.optimize import Adam, Stage, optimize


def _loss(params, step):
    x, y = params["x"], params["y"]
    return (x.sin() * 3 - 1).pow(2).sum(-1) + (y - x[:, :2]).abs().sum(-1) * (1 + step.it)


def test_adam_equals_torch_adam_bit_for_bit_across_stages_and_learning_rates():
    g = torch.Generator().manual_seed(0)
    start = {"x": torch.randn(5, 4, generator=g), "y": torch.randn(5, 2, generator=g)}
    stages = [
        Stage("a", 7, {"x": 0.05, "y": 0.01}),
        Stage("b", 9, {"x": 0.02, "y": 0.03}, reset=False),  # same keys: state kept, new rates
        Stage("c", 5, {"x": 0.01}, betas=(0.8, 0.99), eps=1e-6),  # new Adam
    ]
    ours = {k: v.clone() for k, v in start.items()}
    optimize(ours, stages, _loss)

    ref = {k: v.clone() for k, v in start.items()}
    opt = None
    for stage in stages:
        for name, tensor in ref.items():
            tensor.requires_grad_(name in stage.lrs)
        if stage.name != "b":
            groups = [{"params": [ref[n]], "lr": lr, "name": n} for n, lr in stage.lrs.items()]
            opt = torch.optim.Adam(groups, betas=stage.betas, eps=stage.eps, foreach=False)
        for group in opt.param_groups:
            group["lr"] = stage.lrs[group["name"]]
        for it in range(stage.iters):
            opt.zero_grad(set_to_none=True)
            step = type("S", (), {"it": it})()
            _loss(ref, step).sum().backward()
            opt.step()
    for k in start:
        assert torch.equal(ours[k], ref[k].detach()), k


def test_a_tensor_without_gradient_keeps_its_adam_step_count():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = Adam([a, b], betas=(0.9, 0.999), eps=1e-8)
    opt.lrs = [0.1, 0.1]
    for _ in range(3):
        opt.zero_grad()
        (a**2).sum().backward()
        opt.step()
    assert opt.steps == [3, 0] and torch.equal(b.detach(), torch.ones(3))
    assert bool((a < 1).all())


def test_prepared_time_terms_give_the_same_prior_and_are_forgotten_after_optimize():
    from dposer_cli.core.parts import Part
    from dposer_cli.engine.optimize import PriorSchedule
    from dposer_cli.engine.prior import DPoserPrior

    prior = DPoserPrior.load(Part.body)  # the bundled demo prior (a TimeFC)
    pose = torch.randn(3, 63, generator=torch.Generator().manual_seed(1)) * 0.2
    times = [0.08, 0.1, 0.12]
    noise = torch.randn(3, 63, generator=torch.Generator().manual_seed(2))
    plain = [prior.loss(pose, t, noise=noise) for t in times]
    prior.prepare_times(times)
    assert len(prior._prepared) == 3
    cached = [prior.loss(pose, t, noise=noise) for t in times]
    for a, b in zip(plain, cached, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    prior.prepare_times(None)
    assert prior._prepared == {}

    seen: list[int] = []

    def loss(params, step):
        seen.append(len(prior._prepared))
        return step.prior(params["x"])

    x = {"x": pose.clone()}
    optimize(x, [Stage("s", 4, {"x": 0.01}, uses_prior=True)], loss, prior=PriorSchedule(prior, (0.05, 0.15)))
    assert seen == [4] * 4 and prior._prepared == {}  # prepared for the run's 4 times, then forgotten


# demo TimeFC (time terms precomputed), composite whole-body net, official-format TimeFC (σ-table output scale)
@pytest.mark.parametrize("part", ["body", "wholebody", "official hand"])
def test_prepared_times_give_the_plain_loss_and_gradient_bit_for_bit_when_replayed(
    part, tmp_path, shared_data
):
    from dposer_cli.core.parts import PARTS, Part
    from dposer_cli.engine.prior import DPoserPrior
    from tests._fixtures.checkpoints import write_official_ckpt

    if part == "official hand":
        part = "hand"
        ckpt = write_official_ckpt(tmp_path / "last.ckpt", Part.hand)
        prior = DPoserPrior.from_checkpoint(ckpt, Part.hand, normalizer=shared_data / "official")
        assert prior.net.scale_by_sigma
    else:
        prior = DPoserPrior.load(Part(part))
    pose = torch.randn(2, PARTS[Part(part)].dim, generator=torch.Generator().manual_seed(3)) * 0.3
    times = [0.1, 0.09, 0.08]

    def run(prepared: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        prior.prepare_times(times if prepared else None)
        out = []
        for k in range(6):  # past the recording's warm-up: the last calls are replays
            x = (pose + 0.01 * k).requires_grad_(True)
            g = torch.Generator().manual_seed(k)
            value = prior.loss(x, times[k % 3], weighting="snr2", generator=g)
            (grad,) = torch.autograd.grad(value.sum(), x)
            out.append((value.detach(), grad))
        return out

    for (a, ga), (b, gb) in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b) and torch.equal(ga, gb)
    assert prior._trace.recorded() == 1  # one recording serves every prepared time
    prior.prepare_times(None)
    assert not prior._trace._traced
