"""Official-checkpoint compatibility: key names, EMA selection, safety, part checks; our format round-trip."""

import re
import sys
import types
from pathlib import Path

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


# ---- crafted files: every field that selects code or sizes is checked when the file is read ----------------
def _crafted(tmp_path, mutate) -> Path:
    """A tiny dposer/1 body prior, loaded as plain containers, changed by `mutate(raw)` and saved again."""
    from tests._fixtures.priors import write_tiny_prior

    path = write_tiny_prior(tmp_path / "ck.pt", Part.body)
    raw = torch.load(path, weights_only=True)
    mutate(raw)
    torch.save(raw, path)
    return path


def _set(*keys, value):
    def mutate(raw):
        node = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (_set("config", "sde", "kind", value="zzz"), r"config\.sde\.kind is 'zzz'; expected one of subvp, vp, ve"),
        (_set("config", "net", "kind", value="mlp"), r"config\.net\.kind is 'mlp'; expected one of timefc, wholebody"),
        (_set("config", "rot_rep", value="quat"), r"config\.rot_rep is 'quat'; expected one of axis"),
        (_set("config", "part", value="zzz"), r"config\.part is 'zzz'; expected one of body, hand"),
        (_set("config", "part", value="hand"), r"config\.part is 'hand' but the checkpoint holds a body prior"),
        (_set("part", value=["body"]), r"part is \['body'\]; expected one of body, hand"),
        (_set("config", "net", "scale_by_sigma", value="no"), r"config\.net\.scale_by_sigma is 'no'; expected true or false"),
        (_set("config", "net", "gaussian_skip", value=1), r"config\.net\.gaussian_skip is 1; expected true or false"),
        (_set("config", "net", "hidden_dim", value="32"), r"config\.net\.hidden_dim is '32'; expected a whole number"),
        (_set("config", "net", "dim", value=-63), r"config\.net\.dim is -63; expected a whole number ≥ 1"),
        (_set("config", "net", "n_blocks", value=-1), r"config\.net\.n_blocks is -1; expected a whole number ≥ 0"),
        (_set("config", "net", "part_hidden", value="abc"), r"config\.net\.part_hidden is 'abc'; expected 3 whole"),
        (_set("config", "sde", "beta_min", value="0.1"), r"config\.sde\.beta_min is '0\.1'; expected a finite number"),
        (_set("config", "sde", "sigma_min", value=0.0), r"config\.sde\.sigma_min/sigma_max are 0\.0/50\.0"),
        (_set("config", "sde", "num_scales", value=True), r"config\.sde\.num_scales is True; expected 2\.\.100000"),
        (_set("config", "sde", value=[1, 2]), r"config\.sde is a list; expected a mapping of settings"),
        (_set("config", value="subvp"), r"config is a str; expected a mapping of settings"),
        (_set("config", 7, value=1), r"config has a key 7 that is not a setting name"),
        (_set("config", "net", "widht", value=1), r"unknown config key 'widht'"),
        (_set("model", value=[1]), r"`model` is not a mapping of parameter names to tensors \(it is a list\)"),
        (_set("model", 5, value=torch.zeros(1)), r"`model` .* \(key 5 is an int, not a name\)"),
        (_set("model", "pre_dense.bias", value=3), r"'pre_dense\.bias' holds an int, not a tensor"),
        (_set("model", "b1_dense1.weight", value=torch.zeros(3, 3)), r"b1_dense1\.weight has shape \(3, 3\), expected \(32, 32\)"),
        (_set("model", "sigmas", value=torch.full((1000,), float("nan"))), r"σ table\) must be finite and > 0"),
        (_set("ema", value="abc"), r"`ema` is not a mapping of parameter names to tensors \(it is a str\)"),
        (_set("ema", value={"pre_dense.weight": torch.zeros(3)}), r"EMA tensor for pre_dense\.weight has shape \(3,\)"),
        (_set("ema", value={"nope.weight": torch.zeros(3)}), r"EMA tensor 'nope\.weight' is not a weight"),
        (_set("normalizer", value={"mean": "a", "std": "b"}), r"malformed normaliser \(mean and std are not numbers\)"),
        (_set("health_reasons", value=5), r"health_reasons is 5; expected a list of texts"),
        (_set("step", value="x"), r"step is 'x'; expected a whole number ≥ 0"),
    ],
)  # fmt: skip
def test_crafted_dposer_checkpoint_fields_are_one_line_errors_naming_file_and_field(
    tmp_path, mutate, pattern
):
    path = _crafted(tmp_path, mutate)
    with pytest.raises(AssetMismatchError) as err:
        DPoserPrior.from_checkpoint(path, Part.body)  # read_checkpoint refuses it before anything is built
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert re.search(pattern, msg), msg


def test_unknown_sde_kind_through_the_cli_is_exit_4_with_one_line(tmp_path, capsys):
    from tests.cli._run import run

    path = _crafted(tmp_path, _set("config", "sde", "kind", value="zzz"))
    args = ["generate", "--checkpoint", path, "-n", "2", "--steps", "3", "--no-render", "--device", "cpu"]
    code, _, err = run(capsys, *args, "-o", tmp_path / "x")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 4 and "Traceback" not in err and "internal error" not in err
    assert errors == [f"error: {path}: config.sde.kind is 'zzz'; expected one of subvp, vp, ve"]


def test_build_sde_refuses_an_unknown_kind_with_the_known_ones():
    from dposer_cli.core.config import SDEConfig
    from dposer_cli.engine.sde import build_sde

    with pytest.raises(InputError, match=r"unknown SDE kind 'zzz' \(known: subvp, vp, ve\)"):
        build_sde(SDEConfig(kind="zzz"))


class _Thing:  # pickled by reference to a module that does not exist when the file is read (an inert stand-in)
    pass


def _lightning(tmp_path, mutate) -> Path:
    """A tiny official-layout Lightning checkpoint, changed by `mutate(ckpt)`, saved with `_Thing` importable."""
    net = tiny_net(Part.body)
    ckpt = {
        "state_dict": {f"model.{k}": v.clone() for k, v in net.state_dict().items()},
        "model_ema": {"shadow_params": [p.detach().clone() for p in net.parameters()]},
    }
    mutate(ckpt)
    module = types.ModuleType("dposer_test_gone")
    module.Thing = _Thing
    _Thing.__module__, _Thing.__qualname__ = "dposer_test_gone", "Thing"
    sys.modules["dposer_test_gone"] = module
    try:
        torch.save(ckpt, tmp_path / "last.ckpt")
    finally:
        del sys.modules["dposer_test_gone"]
    return tmp_path / "last.ckpt"


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (_set("state_dict", value=_Thing()), r"`state_dict` is not a mapping .* \(it is an inert stand-in for dposer_test_gone\.Thing\)"),
        (_set("state_dict", value=[1, 2]), r"`state_dict` is not a mapping of parameter names to tensors \(it is a list\)"),
        (_set("state_dict", value="abc"), r"`state_dict` .* \(it is a str\)"),
        (_set("state_dict", 7, value=torch.zeros(1)), r"`state_dict` .* \(key 7 is an int, not a name\)"),
        (_set("state_dict", "model.pre_dense.weight", value=_Thing()), r"'model\.pre_dense\.weight' holds an inert stand-in"),
        (_set("state_dict", "model.b1_dense1.weight", value=torch.zeros(3, 3)), r"b1_dense1\.weight has shape \(3, 3\), expected \(32, 32\)"),
        (_set("state_dict", "model.pre_dense.weight", value=torch.tensor(1.0)), r"wrong number of dimensions"),
        (_set("state_dict", "model.pre_dense.weight", value=torch.zeros(30, 63)), r"hidden_dim is 30; expected a multiple of 32"),
        (_set("model_ema", value=_Thing()), r"`model_ema` is an inert stand-in for dposer_test_gone\.Thing"),
        (_set("model_ema", "shadow_params", value=5), r"model_ema\.shadow_params is not a list of tensors"),
        (_set("model_ema", "shadow_params", value=[_Thing()]), r"model_ema\.shadow_params is not a list of tensors"),
    ],
)  # fmt: skip
def test_lightning_state_dict_that_is_not_a_mapping_of_tensors_is_refused(tmp_path, mutate, pattern):
    path = _lightning(tmp_path, mutate)
    with pytest.raises(AssetMismatchError) as err:
        read_checkpoint(path, Part.body)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert re.search(pattern, msg), msg


def test_lightning_entries_outside_the_model_may_hold_anything(tmp_path):
    path = _lightning(tmp_path, _set("state_dict", "body_model_vis.extra", value=_Thing()))
    assert read_checkpoint(path, Part.body).format == "official-lightning"


def test_restricted_loaders_print_no_library_warnings(tmp_path):
    """A legacy (protocol-4, non-zip) pickle makes torch warn before it is refused: only our line may show."""
    import warnings

    from dposer_cli.engine.normalize import load_statistics

    path = tmp_path / "stats.pt"
    stats = {"mean_poses": torch.zeros(63), "std_poses": torch.ones(63)}
    torch.save(stats, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(AssetMismatchError, match="not a readable normaliser file"):
            load_statistics(path, 63)
        with pytest.raises(AssetMismatchError, match="not a DPoser checkpoint"):
            read_checkpoint(path)
    assert [str(w.message) for w in seen] == []
