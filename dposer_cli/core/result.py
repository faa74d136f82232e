"""What every service returns; `cli._console.emit` prints it (JSON on stdout, text on stderr)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    """Summary of one command run.

    `outputs` maps a name to a written file (or list of files); `metrics` holds numbers with their
    unit in the name (`mpjpe_mm`); `info` holds further top-level JSON fields (checkpoint, sampler,
    steps, nfe, ...); `lines` are human-readable summary lines for stderr.
    """

    command: str
    outputs: dict[str, Path | list[Path]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    status: str = "ok"
