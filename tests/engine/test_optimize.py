"""engine.optimize's Adam is torch.optim.Adam's arithmetic, and the stage loop keeps/reset its state as documented."""

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
