"""`load_body`: search order, built-in fallback, and one-line errors that name every place searched."""

import logging
import shutil

import pytest
import torch

from dposer_cli.bodies import load_body
from dposer_cli.bodies.base import BodyModel
from dposer_cli.core.errors import AssetMismatchError, InputError, MissingAssetError


def test_without_models_body_and_hand_use_the_mannequin_and_say_so(isolated_search, caplog):
    with caplog.at_level(logging.INFO, logger="dposer_cli.bodies.loader"):
        body = load_body("body")
    assert body.kind == "mannequin" and isinstance(body, BodyModel)
    assert "built-in mannequin" in caplog.text and str(isolated_search / "body_models") in caplog.text
    hand = load_body("hand", side="left")
    assert hand.kind == "mannequin-hand" and hand.side == "left"
    out = hand(hand_pose=torch.zeros(2, 45))
    assert out.joints.shape == (2, 21, 3) and hand.joint_set("hand21").shape == (21,)


def test_face_without_flame_is_one_line_naming_every_place_searched(isolated_search, tmp_path, monkeypatch):
    env = tmp_path / "env_models"
    env.mkdir()
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(env))
    with pytest.raises(MissingAssetError) as err:
        load_body("face")
    msg = str(err.value)
    assert "\n" not in msg
    for place in (
        env / "flame" / "FLAME_NEUTRAL.pkl",
        env / "FLAME_NEUTRAL.pkl",
        isolated_search / "body_models" / "flame" / "FLAME_NEUTRAL.pkl",
    ):
        assert str(place) in msg
    assert "flame_static_embedding.pkl" in msg and "flame.is.tue.mpg.de" in err.value.hint


@pytest.mark.parametrize("layout", ["root", "model_folder", "model_file"])
def test_explicit_path_in_any_layout(body_models_root, isolated_search, layout):
    path = {
        "root": body_models_root,
        "model_folder": body_models_root / "mano",
        "model_file": body_models_root / "mano" / "MANO_RIGHT.pkl",
    }[layout]
    hand = load_body("hand", path)
    assert hand.kind == "mano" and hand.side == "right"
    assert load_body("face", body_models_root).kind == "flame"
    assert load_body("body", body_models_root).kind == "smplx"


def test_environment_and_models_cache_are_searched(body_models_root, isolated_search, monkeypatch):
    monkeypatch.setenv("DPOSER_BODY_MODELS", str(body_models_root))
    assert load_body("hand", side="left").kind == "mano"
    monkeypatch.delenv("DPOSER_BODY_MODELS")
    shutil.copytree(body_models_root / "flame", isolated_search / "body_models" / "flame")
    assert load_body("face").kind == "flame"
    assert load_body("body").kind == "mannequin"  # cache holds no SMPL-X


def test_explicit_path_errors_name_the_path(tmp_path, body_models_root):
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingAssetError, match=str(missing)):
        load_body("body", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssetMismatchError) as err:
        load_body("body", empty)
    assert str(empty / "smplx" / "SMPLX_NEUTRAL.npz") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AssetMismatchError, match="MANO file"):
        load_body("body", body_models_root / "mano" / "MANO_RIGHT.pkl")
    with pytest.raises(AssetMismatchError, match="not a left MANO"):
        load_body("hand", body_models_root / "mano" / "MANO_RIGHT.pkl", side="left")


def test_kind_and_side_are_validated():
    with pytest.raises(InputError, match="did you mean 'hand'"):
        load_body("hands")
    with pytest.raises(InputError, match="side"):
        load_body("hand", side="middle")
