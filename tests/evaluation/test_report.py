"""The report folder: metrics.json, report.md with the bar table, valid PNG figures, and the
per-item predictions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from foveal.evaluation.metrics import Metrics, Prediction, evaluate
from foveal.evaluation.report import check_bars, render_markdown, write_predictions, write_report
from foveal.plant.dataset import Label
from tests.evaluation.conftest import image_label, prediction

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def result(labels: list[Label], predictions: list[Prediction]) -> Metrics:
    return evaluate(labels, predictions)


@pytest.fixture
def no_ops(labels: list[Label], predictions: list[Prediction]) -> Metrics:
    # without operations only e1 keeps its right type: type accuracy 1/7
    worse = [dataclasses.replace(p, operations=0, operation_errors=0, bbox=None, bbox_frame=None,
                                 defect_type=p.defect_type if p.item_id in {"e1", "g1", "g3"} else "none")
             for p in predictions]
    return evaluate(labels, worse)


def test_write_report_writes_every_file(tmp_path: Path, result: Metrics, no_ops: Metrics) -> None:
    out = tmp_path / "run"
    report = write_report(out, result, title="Hand set", meta={"model": "tiny | test", "split": "dev"},
                          compare={"no-ops": no_ops})
    assert report == out / "report.md"
    assert Metrics.from_json((out / "metrics.json").read_text(encoding="utf-8")) == result
    for name in ("false_reject_curve.png", "rapr_by_difficulty.png", "accuracy_by_product.png",
                 "type_confusion.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Hand set\n")
    assert "| model | tiny \\| test |" in text  # pipes in meta are escaped
    assert "| Bar | Target | Value | Met |" in text
    assert "| Metric | this run | no-ops |" in text
    for section in ("## Overall", "## Per product", "## Per difficulty", "## Per kind", "## Per route",
                    "## Defect types: labelled (rows) against answered (columns)"):
        assert section in text
    # rows and columns that hold nothing are left out; 'right' is the row's accuracy
    assert "| labelled \\ answered | none | scratch | crack | pit | other | items | right |" in text
    assert "| pit | 1 | 0 | 0 | 2 | 0 | 3 | 0.667 |" in text and "| burn |" not in text
    assert "| after an operation | 6 | 5 |" in text and "| whole frame only | 4 | 2 |" in text
    assert "| metal | 5 | 3 |" in text and "| sequence | 1 | 1 |" in text
    assert "![False reject against escape](false_reject_curve.png)" in text


def test_predictions_are_written_one_object_per_line_and_replace_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text("stale\n")
    records = [{"image": "a", "defect_type": "pit", "label": {"defect_type": "pit"}, "type_correct": True},
               {"image": "b", "defect_type": "none", "label": {"defect_type": "dent"}, "type_correct": False}]
    assert write_predictions(path, records) == path
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert not list(tmp_path.glob("*.tmp"))


def test_bars_are_checked(result: Metrics, no_ops: Metrics) -> None:
    text = render_markdown(result, title="t", meta={}, compare={"no-ops": no_ops})
    expected_rows = [
        "| Image F1 | ≥ 0.97 | 0.857 | ❌ |",  # 6/7
        "| False reject at ≤ 1 % escape | ≤ 0.02 | 0.667 | ❌ |",  # 2/3
        "| Defect-type accuracy | ≥ 0.95 | 0.571 | ❌ |",  # 4/7
        "| Box hit rate | ≥ 0.95 | 0.750 | ❌ |",  # 3/4
        "| RaPR tiny | ≥ 0.9 | 1.000 | ✅ |",
        "| RaPR hard | ≥ 0.9 | 1.000 | ✅ |",
        "| RaPR easy | ≤ 0.3 | 0.000 | ✅ |",
        "| No-ops type accuracy lower by | ≥ 15 pts | +42.9 pts | ✅ |",  # 4/7 - 1/7 = 3/7
    ]
    for row in expected_rows:
        assert row in text, row
    assert "## Bars: 4 of 8 met" in text


def test_no_ops_bar_only_with_a_no_ops_run(result: Metrics) -> None:
    assert len(check_bars(result)) == 7
    assert len(check_bars(result, {"other": result})) == 7
    same = check_bars(result, {"no-ops": result})[-1]
    assert (same.value, same.passed) == (0.0, False)  # no drop at all


def test_undefined_values_fail_their_bar() -> None:
    labels = [image_label("g", "metal"), image_label("e", "metal", "pit", (0.1, 0.1, 0.2, 0.2), "easy")]
    m = evaluate(labels, [prediction("g", "none", 0.1), prediction("e", "pit", 0.9)])
    bars = {b.name: b for b in check_bars(m)}
    assert bars["Image F1"].passed and bars["Defect-type accuracy"].passed
    assert bars["False reject at ≤ 1 % escape"].passed  # 0 at t=0.9
    assert not bars["RaPR tiny"].passed and bars["RaPR tiny"].shown == "n/a"  # no tiny items
    assert not bars["Box hit rate"].passed  # no evidence boxes at all
    assert bars["RaPR easy"].passed


def test_report_shows_the_bootstrap_spread(result: Metrics) -> None:
    text = render_markdown(result, title="t", meta={})
    low, high = result.intervals["type_accuracy"]
    assert "## Spread (95 % bootstrap intervals over the items)" in text
    assert f"| type accuracy | {result.overall.type_accuracy:.3f} | {low:.3f} – {high:.3f} |" in text
