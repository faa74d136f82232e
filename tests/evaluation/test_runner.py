"""`evaluation.run`: request validation, the paper's numbers file, and rows that say what they compare."""

from pathlib import Path

import pytest

from dposer_cli import evaluation
from dposer_cli.core.errors import InputError
from dposer_cli.evaluation.common import Outcome
from dposer_cli.evaluation.paper import paper_body_model, paper_for, paper_results, paper_value
from dposer_cli.evaluation.runner import rows


def test_unknown_benchmark_name_suggests_and_lists():
    with pytest.raises(InputError) as exc:
        evaluation.run(evaluation.BenchmarkRequest(name="generaton"))
    assert "did you mean 'generation'" in exc.value.message
    assert "speed" in exc.value.hint and "completion" in exc.value.hint
    with pytest.raises(InputError, match="needs --data-dir"):
        evaluation.run(evaluation.BenchmarkRequest(name="completion"))
    with pytest.raises(InputError, match="unknown --setting 'leg'"):
        evaluation.run(evaluation.BenchmarkRequest(name="completion", data_dir=Path("."), settings=("leg",)))
    with pytest.raises(InputError, match="--hypo must be at least 1"):
        evaluation.validate(evaluation.BenchmarkRequest(name="completion", data_dir=Path("."), hypo=0))


def test_paper_results_ship_as_data_with_every_table_complete():
    doc = paper_results()
    assert set(doc["evaluations"]) == {
        "generation",
        "completion",
        "wholebody-completion",
        "denoise",
        "hand-ik",
        "face-ik",
        "ehf",
        "arctic",
        "freihand",
    }
    for settings in doc["evaluations"].values():
        for entry in settings.values():
            assert entry["table"].startswith("Table")
            assert all(len(values) == len(entry["metrics"]) for values in entry["rows"].values())
    assert paper_value(paper_for("hand-ik", "sparse"), "DPoser", "mpjpe_occluded_mm") == 5.15
    assert paper_value(paper_for("denoise", "legs"), "w/o prior", "mpjpe_mm") == 55.2  # Table S-7, cm → mm
    assert paper_value(paper_for("completion", "legs"), "VPoser", "mpjpe_min_mm") is None  # an empty cell
    assert paper_value(paper_for("ehf", "ehf"), "NRDF", "pa_mpjpe_mm") == 57.38
    assert (paper_body_model("body"), paper_body_model("hand"), paper_body_model("face")) == (
        "smplx",
        "mano",
        "flame",
    )


def test_rows_keep_the_paper_value_only_on_the_papers_body_model():
    entry = paper_for("denoise", "40mm")
    metrics = {"40mm": {"mpjpe_mm": 20.0, "mpjpe_input_mm": 40.0}}
    same = Outcome(metrics=metrics, settings={}, paper={"40mm": entry}, body_model="smplx")
    table, notes = rows(same, "dposer")
    assert table[0]["paper"] == 19.87 and table[0]["body_model"] == "smplx" and not notes
    other = Outcome(metrics=metrics, settings={}, paper={"40mm": entry}, body_model="mannequin")
    table, notes = rows(other, "dposer")
    assert table[0]["paper"] is None and "mannequin" in table[0]["paper_note"]
    assert table[1]["paper"] is None and "paper_note" not in table[1]  # the paper has no such column
    assert notes == [
        "paper column left empty in 1 row(s): computed on the mannequin body model, the paper's "
        "numbers on smplx (pass --body-model to compare)"
    ]
    free = Outcome(
        metrics=metrics,
        settings={},
        paper={"40mm": entry},
        body_model="mannequin",
        body_independent=("mpjpe_mm",),
    )
    assert rows(free, "dposer")[0][0]["paper"] == 19.87
