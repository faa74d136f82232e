"""Result → JSON-able dict (Paths → str, arrays/tensors → lists), with a schema version."""

import json
import math
from pathlib import Path
from typing import Any

from dposer_cli.core.result import Result

SCHEMA = "dposer-result/1"


def jsonable(value: Any) -> Any:
    """Recursively convert Paths, numpy/torch values and tuples into plain JSON types."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "value") and isinstance(value.value, str):  # str Enums
        return value.value
    return value


def result_dict(result: Result, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "command": result.command,
        "version": version,
        "status": result.status,
        "outputs": jsonable(result.outputs),
        "metrics": jsonable(result.metrics),
    }
    out.update(jsonable(result.info))
    out["seconds"] = round(float(result.seconds), 4)
    return out


def error_dict(command: str, message: str, hint: str | None, exit_code: int, version: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": command,
        "version": version,
        "status": "error",
        "error": message,
        "hint": hint,
        "exit_code": exit_code,
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=None, sort_keys=False)
