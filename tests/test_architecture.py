"""Architecture guards: import contracts hold; `dposer --help` stays torch-free; the CLI entry points exist."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_importing_the_cli_does_not_import_torch():
    code = (
        "import sys, dposer_cli.cli.app as a; a.make_app(); "
        "bad = [m for m in ('torch', 'numpy', 'smplx', 'pyrender') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_download_list_runs_without_torch(tmp_path):
    """`dposer download --list` only reads the file plan: no torch import (~1 s of start-up)."""
    code = (
        "import sys; from dposer_cli.cli.app import main\n"
        "try:\n    main(['download', '--list'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules"
    )
    env = {**os.environ, "DPOSER_MODELS_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env, cwd=tmp_path)


def test_help_lists_commands_and_exits_zero():
    out = subprocess.run([sys.executable, "-m", "dposer_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "generate" in out.stdout


def test_unknown_command_is_usage_error():
    out = subprocess.run([sys.executable, "-m", "dposer_cli", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_import_contracts_hold():
    """Layers, no cycles inside a package, typer/rich only in cli (pyproject's import-linter contracts)."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(exe)], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
