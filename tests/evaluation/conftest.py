"""Shared by the evaluation tests: the synthetic SMPL-X / MANO / FLAME tree (once per module)."""

import pytest


@pytest.fixture(scope="module")
def body_tree(tmp_path_factory):
    from tests._fixtures.body_models import write_body_models_tree

    return write_body_models_tree(tmp_path_factory.mktemp("models"))
