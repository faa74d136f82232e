"""The paper's published numbers (DPoser-X, arXiv 2508.00599v2), shipped as `paper_results.json`.

`evaluations[evaluation][setting]` holds `table` (where it is printed), `metrics` (our metric names, in column
order), `rows` ({method: values}; null where the paper leaves a cell empty) and an optional `note`. Values are
in the units of our metric names: tables published in cm are converted to mm (the note says so).
`body_models[role]` is the body model the paper computed body-dependent metrics with (a `load_body` kind).
"""

import json
from functools import cache
from importlib import resources
from typing import Any

PaperEntry = dict[str, Any]


@cache
def paper_results() -> dict[str, Any]:
    """The whole `paper_results.json` document (read once)."""
    text = resources.files("dposer_cli.evaluation").joinpath("paper_results.json").read_text(encoding="utf-8")
    return json.loads(text)


def paper_for(evaluation: str, setting: str) -> PaperEntry | None:
    """The published table of one evaluation setting, or None."""
    return paper_results()["evaluations"].get(evaluation, {}).get(setting)


def paper_value(entry: PaperEntry | None, row: str, metric: str) -> float | None:
    """One published number (row = method name), or None."""
    if entry is None or row not in entry["rows"] or metric not in entry["metrics"]:
        return None
    return entry["rows"][row][entry["metrics"].index(metric)]


def paper_body_model(role: str) -> str | None:
    """The body model kind the paper used for a model role ("body", "hand", "face")."""
    return paper_results()["body_models"].get(role)
