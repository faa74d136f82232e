"""VPoser v2 baseline: loads the published checkpoint layout and computes what human_body_prior's VPoser
computes (checked against a functional re-implementation from the raw state dict)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.nn import functional as F

from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError
from dposer_cli.engine.priors import build_prior
from dposer_cli.engine.vposer import VPoserPrior
from tests._fixtures.vposer import vposer_state, write_vposer


def _ref_encode(sd, x):
    def bn(h, p):
        return F.batch_norm(
            h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5
        )

    def lin(h, p):
        return h @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]

    h = F.leaky_relu(lin(bn(x, "encoder_net.1"), "encoder_net.2"))
    h = lin(lin(bn(h, "encoder_net.4"), "encoder_net.6"), "encoder_net.7")
    return lin(h, "encoder_net.8.mu")


def _ref_decode_matrices(sd, z):
    def lin(h, p):
        return h @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]

    h = F.leaky_relu(lin(F.leaky_relu(lin(z, "decoder_net.0")), "decoder_net.3"))
    m = lin(h, "decoder_net.5").reshape(-1, 3, 2).double().numpy()
    b1 = m[:, :, 0] / np.linalg.norm(m[:, :, 0], axis=1, keepdims=True)
    b2 = m[:, :, 1] - (b1 * m[:, :, 1]).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-1)


@pytest.fixture
def vposer(tmp_path):
    return VPoserPrior.load(write_vposer(tmp_path))


def test_loads_the_v02_05_folder_and_matches_a_functional_reference(vposer, shared_data):
    sd = vposer_state()
    assert vposer.latent == 8 and "V02_05_epoch=13" in vposer.source
    poses = torch.as_tensor(
        np.load(shared_data / "poses/body_reference_train.npz")["poses"][:16], dtype=torch.float32
    )
    mu = _ref_encode(sd, poses)
    np.testing.assert_allclose(vposer.energy(poses).numpy(), mu.pow(2).sum(-1).numpy(), rtol=1e-4)
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    aa = vposer.decode(z).double().numpy().reshape(-1, 3)
    np.testing.assert_allclose(Rotation.from_rotvec(aa).as_matrix(), _ref_decode_matrices(sd, z), atol=1e-5)
    # the mean pose is decode(0); the loss is the energy and is differentiable in the pose
    np.testing.assert_allclose(
        vposer.mean_pose.numpy(), vposer.decode(torch.zeros(1, 8))[0].numpy(), atol=1e-6
    )
    p = poses.clone().requires_grad_(True)
    vposer.loss(p, 0.1).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_samples_are_seeded_and_completion_keeps_observed_dims(vposer):
    a = vposer.sample(6, generator=torch.Generator().manual_seed(3))
    b = vposer.sample(6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 63) and torch.equal(a, b)
    truth = vposer.decode(torch.randn(4, 8, generator=torch.Generator().manual_seed(4)))
    observed = torch.ones(63, dtype=torch.bool)
    observed[:9] = False  # left leg hidden
    out = vposer.complete(truth, observed, hypo=3, generator=torch.Generator().manual_seed(5))
    assert out.shape == (4, 3, 63)
    assert torch.equal(out[..., observed], truth[:, None, observed].expand(-1, 3, -1))
    filled = (out[..., ~observed] - truth[:, None, ~observed]).abs().mean()
    unrelated = (
        (
            vposer.sample(12, generator=torch.Generator().manual_seed(6)).reshape(4, 3, 63)[..., ~observed]
            - truth[:, None, ~observed]
        )
        .abs()
        .mean()
    )
    assert filled < 0.5 * unrelated, (filled, unrelated)


def test_bad_weights_and_parts(tmp_path):
    with pytest.raises(MissingAssetError, match="--prior vposer needs the VPoser v2 weights"):
        build_prior("vposer", "body")
    with pytest.raises(MissingAssetError, match="VPoser weights not found"):
        VPoserPrior.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingAssetError, match="no VPoser checkpoint in"):
        VPoserPrior.load(tmp_path / "empty")
    folder = write_vposer(tmp_path / "a", drop="encoder_net.4.running_var")
    with pytest.raises(AssetMismatchError, match="missing encoder_net.4.running_var"):
        VPoserPrior.load(folder)
    other = tmp_path / "other.pt"
    torch.save({"model.net.weight": torch.zeros(3)}, other)
    with pytest.raises(AssetMismatchError, match="not a VPoser v2 checkpoint"):
        VPoserPrior.load(other)
    with pytest.raises(InputError, match="VPoser is a body prior; there is none for --part hand"):
        build_prior("vposer", "hand", checkpoint=write_vposer(tmp_path / "b"))
