"""The CLI in-process, as the CLI tests call it."""

import pytest

from dposer_cli.cli.app import main


def run(capsys, *args):
    """`dposer ARGS...` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
