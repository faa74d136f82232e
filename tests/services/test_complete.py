"""`complete` service: completion quality on held-out poses, exact visible entries, masks, metrics.

The quality tests use a prior whose score is exact: a full-covariance Gaussian fitted to the training
slice of body_reference_train.npz (closed-form ε, wrapped in a real `DPoserPrior`), so the test needs no
trained weights; the bundled demo prior is tested the same way when it is present.
"""

import numpy as np
import pytest
import torch
from torch import nn

from dposer_cli.bodies import load_body
from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import PARTS, Part, mask_dims
from dposer_cli.core.paths import demo_checkpoint
from dposer_cli.engine.normalize import Normalizer
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.sde import build_sde
from dposer_cli.services import complete as svc
from dposer_cli.tasks import complete as tc
from tests._fixtures.priors import write_tiny_prior

HELD_OUT = slice(7900, 7960)  # never seen by the Gaussian fit (rows < 7000)


class GaussianEps(nn.Module):
    """Exact ε(x, t) of N(mu, cov) data in normalised space, called like a score network (x, 999·t)."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, sde) -> None:
        super().__init__()
        lam, vec = torch.linalg.eigh(cov.double())
        self.register_buffer("mu", mu.float())
        self.register_buffer("lam", lam.float().clamp_min(1e-6))
        self.register_buffer("vec", vec.float())
        self.sde = sde

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        t = label / (self.sde.N - 1)
        a, s = self.sde.marginal(t)
        r = (x - a[:, None] * self.mu) @ self.vec
        return s[:, None] * (r / (a[:, None] ** 2 * self.lam + s[:, None] ** 2)) @ self.vec.T


def gaussian_prior(data: np.ndarray, part: Part = Part.body) -> DPoserPrior:
    """A DPoserPrior whose network is the closed-form Gaussian ε of `data`."""
    x = torch.as_tensor(data, dtype=torch.float32)
    mean, std = x.mean(0), x.std(0)
    xn = (x - mean) / std
    cfg = PriorConfig(part=part.value, net=NetConfig(dim=x.shape[1]))
    net = GaussianEps(xn.mean(0), torch.cov(xn.T), build_sde(cfg.sde))
    return DPoserPrior(cfg, net, Normalizer.for_part(part, mean, std), source="gaussian")


@pytest.fixture(scope="module")
def body_data():
    from dposer_cli.core.paths import shared_data_dir

    path = shared_data_dir() / "poses" / "body_reference_train.npz"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    return np.load(path)["poses"].astype(np.float32)


@pytest.fixture(scope="module")
def body():
    return load_body("body")


def _mpjpe(body, pred: np.ndarray, gt: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """Independent MPJPE (mm) over the masked body joints: pred (N, H, 63), gt (N, 63) → (N, H)."""
    joints = sorted({d // 3 + 1 for d in dims})  # body joint k ↔ body22 joint k + 1
    with torch.no_grad():
        jp = body(body_pose=torch.as_tensor(pred)).joints[..., joints, :]
        jg = body(body_pose=torch.as_tensor(gt)).joints[..., joints, :]
    return ((jp - jg[:, None]).norm(dim=-1).mean(-1) * 1000).numpy()


def _check_quality(tmp_path, prior, body, train_mean, test, mask):
    src = tmp_path / "in.npz"
    np.savez(src, body_pose=test)
    dims = mask_dims(Part.body, [mask])
    res = svc.run(
        svc.CompleteRequest(input=src, masks=(mask,), hypo=10, out=tmp_path / mask, device="cpu"), prior=prior
    )
    out = np.load(res.outputs["completed"])["body_pose"]
    assert out.shape == (len(test), 10, 63)
    err = _mpjpe(body, out, test, dims)
    mean_fill = test.copy()
    mean_fill[:, list(dims)] = train_mean[list(dims)]
    err_mean = _mpjpe(body, mean_fill[:, None], test, dims)[:, 0]
    # the reported metrics are what an independent computation from the written file gives
    assert res.metrics["mpjpe_min_mm"] == pytest.approx(err.min(1).mean(), rel=1e-4)
    assert res.metrics["mpjpe_mean_mm"] == pytest.approx(err.mean(), rel=1e-4)
    assert res.metrics["apd_cm"] > 0
    # better than the mean pose: best of 10, and the average of the hypotheses as a point estimate
    assert err.min(1).mean() < 0.75 * err_mean.mean()
    err_avg = _mpjpe(body, out.mean(1, keepdims=True), test, dims)[:, 0]
    assert err_avg.mean() < err_mean.mean()
    # one hypothesis (a fresh run) is worse than the best of ten
    one = svc.run(
        svc.CompleteRequest(
            input=src, masks=(mask,), hypo=1, out=tmp_path / f"{mask}1", seed=5, device="cpu"
        ),
        prior=prior,
    )
    single = np.load(one.outputs["completed"])["body_pose"]
    assert single.shape == (len(test), 63)
    assert err.min(1).mean() < _mpjpe(body, single[:, None], test, dims).mean()
    # visible entries are the input's own values, bit for bit
    keep = np.ones(63, bool)
    keep[list(dims)] = False
    np.testing.assert_array_equal(
        out[:, :, keep], np.broadcast_to(test[:, None, keep], out[:, :, keep].shape)
    )
    np.testing.assert_array_equal(single[:, keep], test[:, keep])
    return res


@pytest.mark.parametrize("mask", ["legs", "left_arm"])
def test_completion_beats_mean_pose_and_best_of_ten_beats_one(tmp_path, body_data, body, mask):
    prior = gaussian_prior(body_data[:7000])
    res = _check_quality(tmp_path, prior, body, body_data[:7000].mean(0), body_data[HELD_OUT], mask)
    assert res.info["nfe"] == 200 and res.info["metric_joints"][0] in PARTS[Part.body].joint_names


@pytest.mark.slow
@pytest.mark.skipif(not demo_checkpoint(Part.body).is_file(), reason="bundled demo prior not trained yet")
def test_demo_prior_completion_beats_mean_pose(tmp_path, body_data, body):
    prior = DPoserPrior.load(Part.body, demo_checkpoint(Part.body))
    _check_quality(tmp_path, prior, body, body_data.mean(0), body_data[HELD_OUT][:40], "legs")


def test_nan_entries_are_the_mask_and_everything_else_is_kept(tmp_path, body_data):
    rng = np.random.default_rng(0)
    test = body_data[HELD_OUT][:20].copy()
    holes = rng.random(test.shape) < 0.3
    holes[:, 0] = False  # every row keeps something
    test[holes] = np.nan
    np.savez(tmp_path / "in.npz", pose_body=test)
    res = svc.run(
        svc.CompleteRequest(input=tmp_path / "in.npz", hypo=2, out=tmp_path / "o", steps=20, device="cpu"),
        prior=gaussian_prior(body_data[:7000]),
    )
    data = np.load(res.outputs["completed"])
    assert "pose_body" in data.files  # the input's key
    out = data["pose_body"]
    assert out.shape == (20, 2, 63) and np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 0][~holes], test[~holes])
    assert res.info["mask_source"] == "nan" and res.info["masked_entries"] == holes.sum()
    assert "mpjpe_min_mm" not in res.metrics  # no ground truth for NaN holes


@pytest.mark.parametrize("mode", ["scoresde", "mcg"])
def test_inpainting_modes_keep_visible_entries_and_count_steps(tmp_path, body_data, mode):
    test = body_data[HELD_OUT][:8]
    np.savez(tmp_path / "in.npz", body_pose=test)
    res = svc.run(
        svc.CompleteRequest(
            input=tmp_path / "in.npz",
            masks=("right_arm",),
            hypo=3,
            mode=mode,
            steps=40,
            out=tmp_path / "o",
            device="cpu",
        ),
        prior=gaussian_prior(body_data[:7000]),
    )
    out = np.load(res.outputs["completed"])["body_pose"]
    keep = np.ones(63, bool)
    keep[list(mask_dims(Part.body, ["right_arm"]))] = False
    np.testing.assert_array_equal(out[:, :, keep], np.broadcast_to(test[:, None, keep], (8, 3, keep.sum())))
    assert np.isfinite(out).all() and res.info["nfe"] == 40 and res.metrics["mpjpe_min_mm"] > 0


def test_hand_and_face_metrics_name_what_they_measure(tmp_path):
    hand = tmp_path / "hand.npz"
    np.savez(hand, hand_pose=np.random.default_rng(1).normal(0, 0.2, (4, 45)).astype(np.float32))
    res = svc.run(
        svc.CompleteRequest(
            input=hand,
            part=Part.hand,
            masks=("index",),
            hypo=2,
            steps=4,
            out=tmp_path / "h",
            checkpoint=write_tiny_prior(tmp_path / "h.pt", Part.hand),
            device="cpu",
        )
    )
    assert len(res.info["metric_joints"]) == 21 and res.metrics["mpjpe_min_mm"] >= 0  # the hand's 21 joints
    face = tmp_path / "face.npz"
    rng = np.random.default_rng(2)
    np.savez(
        face,
        jaw_pose=rng.normal(0, 0.1, (3, 3)).astype(np.float32),
        expression=rng.normal(0, 1, (3, 100)).astype(np.float32),
    )
    res = svc.run(
        svc.CompleteRequest(
            input=face,
            part=Part.face,
            masks=("expression",),
            hypo=2,
            steps=4,
            out=tmp_path / "f",
            checkpoint=write_tiny_prior(tmp_path / "f.pt", Part.face),
            device="cpu",
        )
    )
    assert "mpjpe_min_mm" not in res.metrics and res.metrics["param_l2_min"] <= res.metrics["param_l2_mean"]
    assert "L2" in res.info["param_metric"] and res.metrics["param_apd"] > 0


def test_wholebody_hand_mask_is_scored_on_that_hands_joints(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        s.key: rng.normal(0, 0.1, (2, s.dim)).astype(np.float32) for s in PARTS[Part.wholebody].segments
    }
    np.savez(tmp_path / "wb.npz", **arrays)
    res = svc.run(
        svc.CompleteRequest(
            input=tmp_path / "wb.npz",
            part=Part.wholebody,
            masks=("lhand",),
            steps=2,
            out=tmp_path / "o",
            device="cpu",
            checkpoint=write_tiny_prior(tmp_path / "wb.pt", Part.wholebody),
        )
    )
    names = res.info["metric_joints"]
    assert len(names) == 21 and all(n.startswith("left_") for n in names)
    out = np.load(res.outputs["completed"])
    np.testing.assert_array_equal(out["right_hand_pose"], arrays["right_hand_pose"])


# ---- masks --------------------------------------------------------------------------------------------------
def _poses(n: int = 3, dim: int = 63) -> torch.Tensor:
    return torch.zeros(n, dim)


def test_named_and_joint_masks_union():
    m = tc.resolve_masking(Part.body, _poses(), ("left_arm",), (0,))
    hidden = set(torch.nonzero(~m.observed[0]).flatten().tolist())
    assert hidden == set(mask_dims(Part.body, ["left_arm"])) | {0, 1, 2}
    assert m.has_truth and m.source == "mask"


@pytest.mark.parametrize(
    "masks,joints,pattern",
    [
        (("leftarm",), (), "did you mean 'left_arm'"),
        ((), (21,), "joint index 21 is out of range"),
        ((), tuple(range(21)), "covers all 63 dims"),
        (("legs", "arms", "trunk", "head", "left_body", "right_body"), (11, 14), "covers all 63 dims"),
    ],
)
def test_bad_masks_raise_one_line_input_errors(masks, joints, pattern):
    with pytest.raises(InputError, match=pattern) as exc:
        tc.resolve_masking(Part.body, _poses(), masks, joints)
    assert "\n" not in str(exc.value)


def test_nan_outside_mask_names_row_and_key():
    poses = _poses()
    poses[2, 5] = float("nan")  # left_hip is dims 0-2, dim 5 is right_hip
    with pytest.raises(InputError, match=r"row 2, pose_body\[5\] is NaN but outside the mask"):
        tc.resolve_masking(Part.body, poses, ("left_leg",), (), keys=("pose_body",))
    poses[2, 5] = 0.0
    poses[1, 0] = float("nan")  # inside the mask: fine, and the input is no longer ground truth
    assert not tc.resolve_masking(Part.body, poses, ("left_leg",), ()).has_truth


def test_nan_mask_needs_something_missing_and_something_visible():
    with pytest.raises(InputError, match="nothing to complete"):
        tc.resolve_masking(Part.body, _poses(), (), ())
    poses = _poses()
    poses[1] = float("nan")
    with pytest.raises(InputError, match="row 1 is entirely NaN"):
        tc.resolve_masking(Part.body, poses, (), ())


def test_face_shape_has_no_joint_masks():
    with pytest.raises(InputError, match="has no joints"):
        tc.resolve_masking(Part.face_shape, _poses(dim=100), (), (0,))


# ---------------------------------------------------------------------------------------------- completed.png
def _colour_pixels(img: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.06) -> int:
    """Pixels whose chromaticity matches the sRGB colour (shading keeps the ratios roughly)."""
    from tests.render._figures import covered

    x = img.astype(np.float64)
    chroma = x / np.maximum(x.sum(-1, keepdims=True), 1)
    return int(((np.abs(chroma - np.asarray(rgb) / sum(rgb)).max(-1) < tol) & covered(img)).sum())


@pytest.mark.parametrize("truth", [True, False])
def test_completion_picture_has_a_row_per_input_and_colours_the_completed_part(tmp_path, body_data, truth):
    from PIL import Image

    from dposer_cli.render.draw import GHOST_COLOR, HIGHLIGHT_COLOR, TRUTH_COLOR
    from dposer_cli.render.scene import BODY_COLOR

    test = body_data[HELD_OUT][:2].copy()
    if not truth:  # the legs missing as NaN: no ground truth
        test[:, list(mask_dims(Part.body, ["legs"]))] = np.nan
    np.savez(tmp_path / "in.npz", body_pose=test)
    req = svc.CompleteRequest(
        input=tmp_path / "in.npz",
        masks=("legs",) if truth else (),
        hypo=2,
        steps=10,
        out=tmp_path / "o",
        device="cpu",
        render=True,
        renderer="soft",
    )
    res = svc.run(req, prior=gaussian_prior(body_data[:7000]))
    with Image.open(res.outputs["grid"]) as im:
        img = np.asarray(im.convert("RGB"))
    cell, cols = 224, 1 + 2 + int(truth)  # input, 2 hypotheses, [truth]
    sheet = img[-2 * cell :]
    assert img.shape[1] == cols * cell and img.shape[0] > 2 * cell + 40  # title and legend on top
    for r in range(2):
        row = [sheet[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] for c in range(cols)]
        assert _colour_pixels(row[0], GHOST_COLOR, 0.02) > 200  # the missing legs, greyed
        assert _colour_pixels(row[0], HIGHLIGHT_COLOR) == 0
        for hyp in row[1:3]:
            assert _colour_pixels(hyp, HIGHLIGHT_COLOR) > 200  # the completed legs
            assert _colour_pixels(hyp, BODY_COLOR) > 200  # and the visible rest
        if truth:
            assert _colour_pixels(row[3], TRUTH_COLOR) > 200 and _colour_pixels(row[3], HIGHLIGHT_COLOR) == 0
