"""`bench/compare_evals.py`: the paired difference of two eval runs, checked by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "compare_evals.py"


def _record(image: str, truth: str, answered: str) -> dict[str, object]:
    return {"image": image, "defect_type": answered, "type_correct": answered == truth,
            "label": {"defect_type": truth}}


def _write(path: Path, answers: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps(_record(f"f{i}", t, a)) + "\n" for i, (t, a) in enumerate(answers)))
    return path


def test_the_difference_of_two_runs_is_paired_and_computed_as_by_hand(tmp_path: Path) -> None:
    # 4 defects and 2 good parts; the second run names two more types right and passes a good part
    before = _write(tmp_path / "a.jsonl", [("pit", "burn"), ("pit", "burn"), ("dent", "dent"),
                                           ("crack", "none"), ("none", "none"), ("none", "stain")])
    after = _write(tmp_path / "b.jsonl", [("pit", "pit"), ("pit", "pit"), ("dent", "dent"),
                                          ("crack", "none"), ("none", "none"), ("none", "none")])
    out = subprocess.run([sys.executable, str(SCRIPT), str(before), str(after), "--resamples", "400"],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])["results"]
    # before: tp 3, fp 1, fn 1 -> F1 6/8; after: tp 3, fp 0, fn 1 -> F1 6/7
    assert result["image_f1"]["before"] == pytest.approx(0.75)
    assert result["image_f1"]["after"] == pytest.approx(round(6 / 7, 4))
    assert result["type_accuracy"]["before"] == 0.25 and result["type_accuracy"]["after"] == 0.75
    assert result["type_accuracy"]["difference"] == 0.5
    # overall: 2 of 6 right, then 5 of 6; good parts rejected: 1 of 2, then none
    assert result["overall_accuracy"]["before"] == round(2 / 6, 4)
    assert result["overall_accuracy"]["after"] == round(5 / 6, 4)
    assert result["false_reject_rate"]["before"] == 0.5 and result["false_reject_rate"]["after"] == 0.0
    typ = result["type_accuracy"]
    assert typ["low"] <= typ["difference"] <= typ["high"] and typ["low"] >= 0.0  # never worse in a resample


def test_with_defect_scores_the_auroc_per_kind_is_compared_too(tmp_path: Path) -> None:
    def run(path: Path, scores: list[float]) -> Path:
        truths = ["pit", "dent", "none", "none", "crack", "none"]
        kinds = ["image"] * 4 + ["sequence"] * 2
        rows = [{**_record(f"f{i}", t, t), "defect_score": s, "label": {"defect_type": t, "kind": k}}
                for i, (t, s, k) in enumerate(zip(truths, scores, kinds, strict=True))]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    # images: defects 0.9, 0.3 against good 0.5, 0.1 -> 3 of 4 pairs ordered (0.75); then all 4 (1.0)
    before = run(tmp_path / "a.jsonl", [0.9, 0.3, 0.5, 0.1, 0.2, 0.6])
    after = run(tmp_path / "b.jsonl", [0.9, 0.6, 0.5, 0.1, 0.7, 0.6])
    out = subprocess.run([sys.executable, str(SCRIPT), str(before), str(after), "--resamples", "400"],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])["results"]
    assert result["score_auroc_images"]["before"] == 0.75 and result["score_auroc_images"]["after"] == 1.0
    # sequences: the one defect below the one good part, then above it
    sequences = result["score_auroc_sequences"]
    assert sequences["before"] == 0.0 and sequences["after"] == 1.0
    only = subprocess.run([sys.executable, str(SCRIPT), str(before), str(after), "--kind", "sequence"],
                          check=True, capture_output=True, text=True).stdout
    kept = json.loads(only.strip().splitlines()[-1])["results"]
    assert "score_auroc_images" not in kept and "score_auroc_sequences" in kept  # no single image left
    assert kept["score_auroc_sequences"] == sequences


def test_runs_on_different_items_are_refused(tmp_path: Path) -> None:
    before = _write(tmp_path / "a.jsonl", [("pit", "pit"), ("none", "none")])
    after = _write(tmp_path / "b.jsonl", [("pit", "pit")])
    done = subprocess.run([sys.executable, str(SCRIPT), str(before), str(after)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "different items" in done.stderr


def test_box_hits_count_covering_boxes_of_detected_defective_images_over_all_of_them(tmp_path: Path) -> None:
    truth = [0.4, 0.4, 0.5, 0.5]
    inside, beside = [0.3, 0.3, 0.6, 0.6], [0.6, 0.6, 0.9, 0.9]

    def run(path: Path, rows: list[tuple[str, str, list[float] | None]]) -> Path:
        records = [{**_record(f"f{i}", t, a), "bbox": box,
                    "label": {"defect_type": t, "kind": "image", "bbox": None if t == "none" else truth}}
                   for i, (t, a, box) in enumerate(rows)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    # 3 defective images: one covered, one boxed beside it, one called `none` with a covering box
    # (a miss: no defect answered); the good image's box never counts
    before = run(tmp_path / "a.jsonl", [("pit", "pit", inside), ("dent", "dent", beside),
                                        ("crack", "none", inside), ("none", "none", inside)])
    after = run(tmp_path / "b.jsonl", [("pit", "pit", inside), ("dent", "pit", inside),
                                       ("crack", "crack", inside), ("none", "none", inside)])
    out = subprocess.run([sys.executable, str(SCRIPT), str(before), str(after), "--resamples", "400"],
                         check=True, capture_output=True, text=True).stdout
    hits = json.loads(out.strip().splitlines()[-1])["results"]["box_hits_images"]
    assert hits["before"] == round(1 / 3, 4) and hits["after"] == 1.0  # a wrong type still has its box
