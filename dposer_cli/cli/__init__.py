"""The only layer that knows Typer, Rich, stdout and exit codes."""
