"""core.paths: where models are looked for, and a misconfigured models folder said at once."""

import pytest

from dposer_cli.core.errors import InputError
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import body_model_dirs, models_dir, official_checkpoint


def test_the_environment_names_the_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "cache"))  # need not exist yet (download makes it)
    assert models_dir() == tmp_path / "cache"
    assert official_checkpoint(Part.body).is_relative_to(tmp_path / "cache" / "official")
    assert body_model_dirs()[-1] == tmp_path / "cache" / "body_models"


def test_a_file_as_the_models_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "f.txt").write_text("x")
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "f.txt"))
    with pytest.raises(InputError, match=r"DPOSER_MODELS_DIR=.*f\.txt exists and is not a folder"):
        models_dir()


def test_a_file_as_the_models_folder_stops_generate_before_any_output(tmp_path, monkeypatch, capsys):
    from tests.cli._run import run

    (tmp_path / "f.txt").write_text("x")
    monkeypatch.setenv("DPOSER_MODELS_DIR", str(tmp_path / "f.txt"))
    code, _, err = run(capsys, "generate", "-n", "2", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 1 and "DPOSER_MODELS_DIR=" in err and "not a folder" in err
    assert not (tmp_path / "o").exists()
