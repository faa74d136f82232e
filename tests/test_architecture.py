"""Architecture guards: `dposer --help` stays torch-free; the CLI entry points exist."""

import subprocess
import sys


def test_importing_the_cli_does_not_import_torch():
    code = ("import sys, dposer_cli.cli.app as a; a.make_app(); "
            "bad = [m for m in ('torch', 'numpy', 'smplx', 'pyrender') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_commands_and_exits_zero():
    out = subprocess.run([sys.executable, "-m", "dposer_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "generate" in out.stdout


def test_unknown_command_is_usage_error():
    out = subprocess.run([sys.executable, "-m", "dposer_cli", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
