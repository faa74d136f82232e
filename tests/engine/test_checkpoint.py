"""Official-checkpoint compatibility: key names, EMA selection, safety, part checks; our format round-trip."""

import pytest
import torch

from dposer_cli.core.config import NetConfig, PriorConfig
from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError
from dposer_cli.core.parts import PARTS, Part
from dposer_cli.engine.checkpoint import read_checkpoint, save_checkpoint
from dposer_cli.engine.nets import TimeFC, build_net
from dposer_cli.engine.prior import DPoserPrior
from tests._fixtures.checkpoints import tiny_net, write_malicious_ckpt, write_official_ckpt

OFFICIAL_KEYS_TIMEFC = [
    "sigmas",
    "pre_dense.weight",
    "pre_dense.bias",
    "pre_dense_t.weight",
    "pre_dense_t.bias",
    "pre_gnorm.weight",
    "pre_gnorm.bias",
    "shared_time_embed.0.weight",
    "shared_time_embed.0.bias",
]


def test_timefc_has_official_keys_shapes_and_parameter_count():
    net = TimeFC(63, 63, 1024, 512)
    sd = net.state_dict()
    assert list(sd)[:9] == OFFICIAL_KEYS_TIMEFC
    assert len(sd) == 35 and list(sd)[-2:] == ["post_dense.weight", "post_dense.bias"]
    assert sum(p.numel() for p in net.parameters()) == 7_227_967  # spec §2.6
    assert torch.allclose(sd["sigmas"][[0, -1]], torch.tensor([50.0, 0.01]))


def test_wholebody_finetune_matches_official_layout():
    net = build_net(NetConfig(kind="wholebody", dim=256, hidden_dim=512, embed_dim=256))
    sd = net.state_dict()
    assert len(sd) == 144 and "zero_linear.weight" in sd and "output_linear.weight" in sd
    assert sum(p.numel() for p in net.parameters()) == 25_803_219
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 4_074_240


@pytest.mark.parametrize("part", [Part.body, Part.hand, Part.face, Part.face_shape, Part.wholebody])
def test_official_ckpt_loads_with_ema_weights_without_ml_collections(tmp_path, part):
    path = write_official_ckpt(tmp_path / "last.ckpt", part)
    ck = read_checkpoint(path, part)
    assert ck.format == "official-lightning" and ck.part is part
    assert ck.config.net.hidden_dim == 32  # read from weights, not assumed
    ref = tiny_net(part)
    trainable = [n for n, p in ref.named_parameters() if p.requires_grad]
    assert list(ck.ema) == trainable
    # the prior uses EMA weights (= weights + 0.5 in the fixture)
    norm = tmp_path / "stats.pt"
    dim = PARTS[part].dim
    if len(PARTS[part].segments) == 1:
        torch.save({"mean_poses": torch.zeros(dim), "std_poses": torch.ones(dim)}, norm)
        prior = DPoserPrior.from_checkpoint(path, part, normalizer=norm)
        name = trainable[0]
        got = dict(prior.net.named_parameters())[name]
        torch.testing.assert_close(got, dict(ref.named_parameters())[name] + 0.5)


def test_malicious_pickle_is_refused(tmp_path):
    path = write_malicious_ckpt(tmp_path / "evil.ckpt")
    with pytest.raises(AssetMismatchError, match="could run code"):
        read_checkpoint(path)


def test_wrong_part_is_a_clear_error(tmp_path):
    path = write_official_ckpt(tmp_path / "last.ckpt", Part.hand)
    with pytest.raises(AssetMismatchError, match="is a hand prior .* not body"):
        read_checkpoint(path, Part.body)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(AssetMismatchError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(InputError, match="not found"):
        read_checkpoint(tmp_path / "nope.ckpt")


def test_official_needs_normalizer_and_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))
    path = write_official_ckpt(tmp_path / "last.ckpt", Part.body)
    with pytest.raises(MissingAssetError, match="normaliser statistics .* not found"):
        DPoserPrior.from_checkpoint(path, Part.body)


def test_official_normalizer_from_shared_data(tmp_path, shared_data):
    path = write_official_ckpt(tmp_path / "last.ckpt", Part.wholebody)
    prior = DPoserPrior.from_checkpoint(path, Part.wholebody, normalizer=shared_data / "official")
    assert prior.normalizer.mean.shape == (256,)
    # left hand mirrored: y, z components flipped
    assert prior.normalizer.signs[64].item() == -1 and prior.normalizer.signs[63].item() == 1
    x = torch.randn(4, 256)
    torch.testing.assert_close(prior.denormalize(prior.normalize(x)), x, atol=1e-5, rtol=1e-5)


def test_our_format_round_trip_and_weights_only(tmp_path):
    net = tiny_net(Part.hand)
    cfg = PriorConfig(part="hand", net=NetConfig(dim=45, hidden_dim=32, embed_dim=16))
    p = save_checkpoint(
        tmp_path / "p.pt",
        part=Part.hand,
        config=cfg,
        model=net.state_dict(),
        ema=None,
        normalizer={"mean": torch.zeros(45), "std": torch.ones(45)},
        step=3,
    )
    raw = torch.load(p, weights_only=True)
    assert raw["format"] == "dposer/1" and raw["part"] == "hand"
    prior = DPoserPrior.from_checkpoint(p, "hand")
    x = torch.randn(3, 45)
    torch.testing.assert_close(prior.net(x, torch.full((3,), 10.0)), net.eval()(x, torch.full((3,), 10.0)))
    with pytest.raises(AssetMismatchError):
        read_checkpoint(p, Part.body)


def test_sample_motion_shaped_batches(tmp_path):
    from tests._fixtures.priors import write_tiny_prior

    prior = DPoserPrior.from_checkpoint(write_tiny_prior(tmp_path / "p.pt", Part.body), "body")
    for sampler in ("em", "ddim", "dpm2m"):
        x = prior.sample(2, sampler=sampler, steps=3, shape=(5,), generator=torch.Generator().manual_seed(0))
        assert x.shape == (2, 5, 63) and torch.isfinite(x).all()
