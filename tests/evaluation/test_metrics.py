"""Every metric against numbers worked out by hand on the ten items of conftest.py."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import json
import math
from dataclasses import replace

import pytest

from foveal.evaluation import metrics as metrics_module
from foveal.evaluation.metrics import (
    EvaluationError,
    Metrics,
    Prediction,
    evaluate,
    false_reject_at_escape,
    threshold_curve,
)
from foveal.plant.dataset import Label
from tests.evaluation.conftest import hand_labels, hand_predictions, image_label, prediction, sequence_label


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-12)


@pytest.fixture
def result(labels: list[Label], predictions: list[Prediction]) -> Metrics:
    return evaluate(labels, predictions)


def test_counts(result: Metrics) -> None:
    o = result.overall
    assert (o.n, o.n_defective, o.n_good) == (10, 7, 3)


def test_detection_f1_precision_recall(result: Metrics) -> None:
    o = result.overall
    # TP = e1 h1 h2 t1 t2(banana) s1 = 6, FN = e2, FP = g2
    assert o.precision == approx(6 / 7)  # 6 / (6 + 1)
    assert o.recall == approx(6 / 7)  # 6 / (6 + 1)
    assert o.image_f1 == approx(6 / 7)  # 2*6 / (2*6 + 1 + 1) = 12/14
    assert o.escape_rate == approx(1 / 7)  # e2 answered none
    assert o.false_reject_rate == approx(1 / 3)  # g2 answered scratch


def test_threshold_curve_is_exact_with_the_tie_as_one_threshold(result: Metrics) -> None:
    # defective scores 0.30 0.55 0.70 0.80 0.85 0.90 0.95; good 0.10 0.30 0.60 (e2 and g3 tie at 0.30)
    assert result.curve == [
        (0 / 7, 3 / 3),  # t=0.10: nothing escapes, every good part rejected
        (0 / 7, 2 / 3),  # t=0.30: e2 and g3 both rejected (the tie cannot be split)
        (1 / 7, 1 / 3),  # t=0.55: e2 escapes, g2 (0.60) rejected
        (2 / 7, 1 / 3),  # t=0.60: t2 (0.55) escapes too
        (2 / 7, 0 / 3),  # t=0.70
        (3 / 7, 0.0),  # t=0.80
        (4 / 7, 0.0),  # t=0.85
        (5 / 7, 0.0),  # t=0.90
        (6 / 7, 0.0),  # t=0.95
        (1.0, 0.0),  # t=inf
    ]


def test_false_reject_at_one_percent_escape(result: Metrics) -> None:
    # 1 % of 7 defective parts allows 0 escapes: t in {0.10, 0.30}; lowest FR = 2/3 at t=0.30
    assert result.overall.false_reject_at_escape == approx(2 / 3)
    assert result.overall.threshold == 0.30
    assert result.threshold == 0.30
    assert result.max_escape == 0.01


def test_type_and_overall_accuracy(result: Metrics) -> None:
    # defective with the right type: e1 h1 t1 s1 (e2 none, h2 scratch, t2 banana are wrong)
    assert result.overall.type_accuracy == approx(4 / 7)
    # + good parts answered none: g1 g3 -> (4 + 2) / 10
    assert result.overall.overall_accuracy == approx(0.6)


def test_uncertain_verdicts_are_counted_and_the_rest_scored_alone(labels: list[Label]) -> None:
    # g2 (wrong: a good part called scratch), h1 (right) and t2 (wrong) left to a person
    marked = {"g2", "h1", "t2"}
    predictions = [replace(p, uncertain=p.item_id in marked) for p in hand_predictions()]
    overall = evaluate(labels, predictions).overall
    assert overall.uncertain_share == approx(3 / 10)
    # the other seven: g1 g3 e1 t1 s1 right, e2 h2 wrong
    assert overall.confident_accuracy == approx(5 / 7)
    assert overall.overall_accuracy == approx(0.6)  # every answer still counts here
    by = evaluate(labels, predictions).by_difficulty
    assert by["hard"].uncertain_share == approx(1 / 2) and by["hard"].confident_accuracy == 0.0
    every = [replace(p, uncertain=True) for p in hand_predictions()]
    assert evaluate(labels, every).overall.confident_accuracy is None  # nothing decided alone


def test_items_are_split_by_whether_the_model_looked_closer_before_answering(result: Metrics) -> None:
    zoomed, whole = result.by_route["after an operation"], result.by_route["whole frame only"]
    assert list(result.by_route) == ["after an operation", "whole frame only"]
    # with >= 1 operation: g2 h1 h2 t1 t2 s1; the defective among them h1 h2 t1 t2 s1, of which
    # h1 t1 s1 are named right; from the whole frame: g1 g3 e1 e2, e1 named right, e2 missed
    assert (zoomed.n, zoomed.n_defective, whole.n, whole.n_defective) == (6, 5, 4, 2)
    assert zoomed.type_accuracy == approx(3 / 5) and whole.type_accuracy == approx(1 / 2)
    assert zoomed.overall_accuracy == approx(3 / 6) and whole.overall_accuracy == approx(3 / 4)
    assert zoomed.rapr == 1.0 and whole.rapr == 0.0


def test_the_type_confusion_counts_every_item_once_under_its_labelled_and_answered_type(
        result: Metrics) -> None:
    c = result.confusion
    assert list(c) == ["none", "scratch", "crack", "pit", "stain", "burn", "dent"]
    assert all(list(row) == [*c, "unanswered", "other"] for row in c.values())
    assert sum(sum(row.values()) for row in c.values()) == 10
    nonzero = {(t, a): n for t, row in c.items() for a, n in row.items() if n}
    assert nonzero == {("none", "none"): 2, ("none", "scratch"): 1, ("scratch", "scratch"): 1,
                       ("pit", "none"): 1, ("pit", "pit"): 2, ("crack", "crack"): 1,
                       ("stain", "scratch"): 1, ("dent", "other"): 1}  # t2 answered 'banana'


def test_box_hit_and_coverage(result: Metrics) -> None:
    # detected defective: e1 h1 h2 t1 t2 s1 (6); with a box: h1 h2 t1 s1 (4); hits: h1 h2 s1
    assert result.overall.box_hit_rate == approx(3 / 4)
    assert result.overall.box_coverage == approx(4 / 6)


def test_rapr_errors_and_latency(result: Metrics) -> None:
    # items with >= 1 operation: g2 h1 h2 t1 t2 s1
    assert result.overall.rapr == approx(6 / 10)
    # errors h1 1 + t2 1 = 2 over operations 1+2+1+3+1+2 = 10
    assert result.overall.operation_error_rate == approx(2 / 10)
    # sorted 100 120 150 200 300 700 800 900 1200 2000; p50 at rank 4.5, p95 at rank 8.55
    assert result.overall.latency_p50_ms == approx((300 + 700) / 2)
    assert result.overall.latency_p95_ms == approx(1200 + 0.55 * (2000 - 1200))


def test_by_product(result: Metrics) -> None:
    assert list(result.by_product) == ["metal", "pcb"]
    metal, pcb = result.by_product["metal"], result.by_product["pcb"]
    # metal: g1 g2 | e1 h1 t2; TP 3, FP g2, FN 0
    assert (metal.n, metal.n_defective, metal.n_good) == (5, 3, 2)
    assert metal.precision == approx(3 / 4)
    assert metal.recall == approx(1.0)
    assert metal.image_f1 == approx(6 / 7)  # 2*3 / (6 + 1 + 0)
    # defective 0.55 0.80 0.90, good 0.10 0.60: t=0.55 lets nothing escape and rejects g2 only
    assert metal.false_reject_at_escape == approx(1 / 2)
    assert metal.threshold == 0.55
    assert metal.type_accuracy == approx(2 / 3)  # e1 h1
    assert metal.overall_accuracy == approx(3 / 5)  # e1 h1 g1
    assert metal.box_hit_rate == approx(1.0)  # h1 is the only detected one with a box
    assert metal.box_coverage == approx(1 / 3)  # of e1 h1 t2
    assert metal.rapr == approx(3 / 5)  # g2 h1 t2
    assert metal.operation_error_rate == approx(2 / 4)
    # pcb: g3 | e2 h2 t1 s1; TP 3, FN e2, FP 0
    assert (pcb.n, pcb.n_defective, pcb.n_good) == (5, 4, 1)
    assert pcb.precision == approx(1.0)
    assert pcb.recall == approx(3 / 4)
    assert pcb.image_f1 == approx(6 / 7)  # 2*3 / (6 + 0 + 1)
    # e2 ties g3 at 0.30: zero escapes only at t <= 0.30, which rejects g3
    assert pcb.false_reject_at_escape == approx(1.0)
    assert pcb.threshold == 0.30
    assert pcb.type_accuracy == approx(2 / 4)  # t1 s1
    assert pcb.box_hit_rate == approx(2 / 3)  # h2 s1 of h2 t1 s1
    assert pcb.box_coverage == approx(1.0)
    assert pcb.operation_error_rate == approx(0.0)  # 0 of 1+3+2


def test_by_difficulty(result: Metrics) -> None:
    d = result.by_difficulty
    assert list(d) == ["easy", "hard", "tiny", "none"]
    assert [d[k].n for k in d] == [2, 2, 3, 3]
    assert d["easy"].rapr == 0.0  # e1 e2 ran no operation
    assert d["hard"].rapr == 1.0
    assert d["tiny"].rapr == 1.0
    assert d["none"].rapr == approx(1 / 3)  # g2
    assert d["easy"].image_f1 == approx(2 / 3)  # TP e1, FN e2: 2 / (2 + 0 + 1)
    assert d["easy"].type_accuracy == approx(1 / 2)
    assert d["hard"].box_hit_rate == 1.0
    assert d["tiny"].type_accuracy == approx(2 / 3)  # t1 s1, not t2
    assert d["tiny"].box_hit_rate == approx(1 / 2)  # s1 of t1 s1
    assert d["tiny"].box_coverage == approx(2 / 3)  # t2 has no box
    # the defect-free group: nothing to detect, one false reject
    none = d["none"]
    assert (none.precision, none.recall, none.image_f1) == (0.0, None, 0.0)
    assert none.type_accuracy is None and none.box_hit_rate is None and none.box_coverage is None
    assert none.false_reject_rate == approx(1 / 3)
    assert none.false_reject_at_escape is None  # no defective parts to set a threshold
    assert none.overall_accuracy == approx(2 / 3)
    assert d["easy"].false_reject_at_escape is None  # no good parts


def test_by_kind(result: Metrics) -> None:
    k = result.by_kind
    assert list(k) == ["image", "sequence"]
    assert (k["image"].n, k["sequence"].n) == (9, 1)
    assert k["image"].image_f1 == approx(10 / 12)  # TP 5, FP g2, FN e2
    assert k["image"].type_accuracy == approx(3 / 6)  # e1 h1 t1
    assert k["sequence"].image_f1 == 1.0
    assert k["sequence"].box_hit_rate == 1.0
    assert k["sequence"].false_reject_at_escape is None


def test_all_right_gives_perfect_scores(labels: list[Label]) -> None:
    perfect = [prediction(label.id, label.defect_type, 0.9 if label.defect_type != "none" else 0.1)
               for label in labels]
    o = evaluate(labels, perfect).overall
    assert (o.precision, o.recall, o.image_f1) == (1.0, 1.0, 1.0)
    assert o.false_reject_at_escape == 0.0
    assert o.threshold == 0.9  # t=0.10 rejects everything; t=0.90 lets nothing escape and rejects none
    assert (o.type_accuracy, o.overall_accuracy, o.escape_rate, o.false_reject_rate) == (1.0, 1.0, 0.0, 0.0)
    assert o.box_hit_rate is None and o.box_coverage == 0.0  # detected, but no boxes given
    assert o.rapr == 0.0 and o.operation_error_rate is None


def test_no_good_items_gives_no_false_reject() -> None:
    labels = [image_label("a", "metal", "pit", (0.1, 0.1, 0.2, 0.2), "easy")]
    m = evaluate(labels, [prediction("a", "pit", 0.8)])
    assert m.overall.false_reject_at_escape is None
    assert m.threshold is None
    assert m.curve == []
    assert m.overall.false_reject_rate is None


def test_missing_prediction_raises_a_clear_error(labels: list[Label], predictions: list[Prediction]) -> None:
    with pytest.raises(EvaluationError, match=r"1 labelled item\(s\) have no prediction: h2"):
        evaluate(labels, [p for p in predictions if p.item_id != "h2"])


def test_extra_and_duplicate_ids_raise(labels: list[Label], predictions: list[Prediction]) -> None:
    with pytest.raises(EvaluationError, match="no label: zz"):
        evaluate(labels, [*predictions, prediction("zz", "none", 0.1)])
    with pytest.raises(EvaluationError, match="two predictions for item 'g1'"):
        evaluate(labels, [*predictions, predictions[0]])
    with pytest.raises(EvaluationError, match="duplicate label ids: g1"):
        evaluate([*labels, labels[0]], predictions)
    with pytest.raises(EvaluationError, match="no labels"):
        evaluate([], [])


def test_unknown_answers_are_rejects_with_the_wrong_type() -> None:
    labels = [image_label("good", "metal"), image_label("bad", "metal", "pit", (0.1, 0.1, 0.2, 0.2), "easy")]
    answers = [prediction("good", "banana", 0.2), prediction("bad", "unanswered", 0.3)]
    o = evaluate(labels, answers).overall
    assert o.false_reject_rate == 1.0  # a good part answered garbage is rejected
    assert o.recall == 1.0  # a defective part answered garbage is not an escape
    assert o.precision == 0.5 and o.image_f1 == approx(2 / 3)  # TP bad, FP good: 2 / (2 + 1)
    assert o.type_accuracy == 0.0 and o.overall_accuracy == 0.0


def test_sequence_evidence_frame_decides_the_box_hit() -> None:
    box = (0.49, 0.49, 0.53, 0.53)
    labels = [sequence_label(f"s{k}", "pcb", "pit", [None, (0.50, 0.50, 0.52, 0.52), None]) for k in range(4)]
    answers = [
        prediction("s0", "pit", 0.9, bbox=box, frame=1),  # the defect's frame: hit
        prediction("s1", "pit", 0.9, bbox=box, frame=0),  # a frame without the defect: miss
        prediction("s2", "pit", 0.9, bbox=box, frame=None),  # frame unknown: miss
        prediction("s3", "pit", 0.9, bbox=box, frame=7),  # no such frame: miss
    ]
    assert evaluate(labels, answers).overall.box_hit_rate == approx(1 / 4)


def test_box_tolerance_is_half_a_percent_per_side() -> None:
    labels = [image_label("a", "m", "pit", (0.30, 0.30, 0.40, 0.40), "easy"),
              image_label("b", "m", "pit", (0.30, 0.30, 0.40, 0.40), "easy")]
    answers = [prediction("a", "pit", 0.9, bbox=(0.305, 0.305, 0.395, 0.395)),  # short by 0.005: hit
               prediction("b", "pit", 0.9, bbox=(0.307, 0.30, 0.40, 0.40))]  # short by 0.007: miss
    assert evaluate(labels, answers).overall.box_hit_rate == approx(1 / 2)


def test_one_escape_in_a_hundred_is_within_one_percent() -> None:
    defective = [0.5] + [0.9] * 99
    good = [0.6] + [0.1] * 9
    # t=0.9: 1/100 escapes (allowed), no good part >= 0.9
    assert false_reject_at_escape(defective, good, 0.01) == (0.0, 0.9)
    # no escape allowed: t=0.5 rejects the good part at 0.6
    assert false_reject_at_escape(defective, good, 0.0) == (approx(0.1), 0.5)
    with pytest.raises(ValueError, match="max_escape"):
        false_reject_at_escape(defective, good, 1.0)


def test_threshold_curve_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="defective and good"):
        threshold_curve([0.5], [])
    assert threshold_curve([0.5, 0.5], [0.5]) == [(0.5, 0.0, 1.0), (math.inf, 1.0, 0.0)]


def test_prediction_rejects_bad_values() -> None:
    base = hand_predictions()[0]
    for change in ({"defect_score": 1.5}, {"defect_score": math.nan}, {"confidence": -0.1},
                   {"operations": 1, "operation_errors": 2}, {"latency_ms": -1.0},
                   {"bbox": (0.5, 0.5, 0.4, 0.6)}, {"bbox_frame": -1}, {"item_id": ""}):
        with pytest.raises(ValueError):
            dataclasses.replace(base, **change)  # type: ignore[arg-type]


def test_json_round_trip_with_stable_keys(result: Metrics) -> None:
    data = json.loads(result.to_json())
    assert list(data) == [
        "max_escape", "overall", "by_product", "by_difficulty", "by_kind", "curve", "threshold",
        "intervals", "by_route", "confusion"]
    assert list(data["overall"])[:3] == ["n", "n_defective", "n_good"]
    assert data["curve"][1] == [0.0, approx(2 / 3)]
    assert data == result.to_dict()
    assert Metrics.from_json(result.to_json()) == result


def test_evaluate_does_not_depend_on_prediction_order(
        labels: list[Label], predictions: list[Prediction]) -> None:
    assert evaluate(labels, predictions[::-1]) == evaluate(hand_labels(), predictions)


def test_doctests_pass() -> None:
    outcome = doctest.testmod(metrics_module)
    assert outcome.failed == 0 and outcome.attempted > 0


def test_metrics_module_does_not_import_matplotlib() -> None:
    source = metrics_module.__file__
    assert source is not None
    with open(source, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("matplotlib") for name in imported)


def test_bootstrap_intervals_hold_the_point_value_and_repeat(result: Metrics, labels: list[Label],
                                                             predictions: list[Prediction]) -> None:
    assert set(result.intervals) == set(metrics_module.INTERVAL_METRICS)
    for name, (low, high) in result.intervals.items():
        value = getattr(result.overall, name)
        assert low <= value <= high, name
    low, high = result.intervals["image_f1"]
    assert high - low > 0.1  # ten items: a wide interval, not a point
    assert evaluate(labels, predictions).intervals == result.intervals  # seeded


def test_perfect_answers_have_a_point_interval(labels: list[Label]) -> None:
    perfect = [prediction(label.id, label.defect_type, 0.9 if label.defect_type != "none" else 0.1)
               for label in labels]
    intervals = evaluate(labels, perfect).intervals
    assert intervals["image_f1"] == (1.0, 1.0) and intervals["type_accuracy"] == (1.0, 1.0)


def test_reports_without_intervals_still_load(result: Metrics) -> None:
    data = json.loads(result.to_json())
    del data["intervals"]
    assert Metrics.from_json(json.dumps(data)).intervals == {}
    assert evaluate(hand_labels(), hand_predictions(), resamples=0).intervals == {}


def test_a_reviewed_sequence_is_judged_against_its_one_box() -> None:
    box = (0.4, 0.4, 0.5, 0.5)
    label = Label(id="r1", frames=[f"sequences/r1/{k:02d}.png" for k in range(4)], product="tile",
                  defect_type="crack", width=100, height=100, bbox=box, bbox_frame=2)
    evidence = (0.38, 0.38, 0.52, 0.52)
    hit = evaluate([label], [prediction("r1", "crack", 0.9, ops=1, bbox=evidence, frame=2)])
    elsewhere = evaluate([label], [prediction("r1", "crack", 0.9, ops=1, bbox=evidence, frame=1)])
    assert hit.overall.box_hit_rate == 1.0 and elsewhere.overall.box_hit_rate == 0.0


def test_paired_differences_are_zero_for_the_same_answers_and_count_a_fixed_item(
        labels: list[Label], predictions: list[Prediction]) -> None:
    from foveal.evaluation.metrics import paired_differences

    same = paired_differences(labels, predictions, predictions, resamples=200)
    assert set(same) == set(metrics_module.INTERVAL_METRICS)
    assert all(value == (0.0, 0.0, 0.0) for value in same.values())  # the same items drawn for both
    # the false alarm on g2 gone
    fixed = [prediction("g2", "none", 0.10) if p.item_id == "g2" else p for p in predictions]
    diff, low, high = paired_differences(labels, predictions, fixed, resamples=200)["overall_accuracy"]
    assert diff == pytest.approx(1 / len(labels)) and low >= 0.0 and high > 0.0
