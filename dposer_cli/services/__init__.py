"""One module per command: composes engine, bodies, io, render and metrics. No Typer/Rich here."""
