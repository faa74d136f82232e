"""Body-model fixtures: synthetic SMPL-X/MANO/FLAME files (written once per session) and mannequins."""

import pytest
import torch

from tests._fixtures.body_models import write_body_models_tree

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def body_models_root(tmp_path_factory):
    """A `body_models/` tree in smplx layout: smplx/SMPLX_NEUTRAL.npz, mano/MANO_{RIGHT,LEFT}.pkl, flame/…"""
    return write_body_models_tree(tmp_path_factory.mktemp("body_models"))


@pytest.fixture(scope="session")
def mannequin64():
    from dposer_cli.bodies.mannequin import MannequinBody

    return MannequinBody(torch.float64)


@pytest.fixture(scope="session")
def mannequin32():
    from dposer_cli.bodies.mannequin import MannequinBody

    return MannequinBody()


@pytest.fixture
def isolated_search(tmp_path, monkeypatch):
    """No body models anywhere: an empty models cache and no $DPOSER_BODY_MODELS."""
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DPOSER_BODY_MODELS", raising=False)
    return tmp_path / "cache"
