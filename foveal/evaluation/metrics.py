"""Score predictions against labels: detection F1, false reject at a fixed escape rate, defect-type
accuracy, evidence-box hits, the rate of pixel-space reasoning (RaPR), errors and latency.

`evaluate(labels, predictions)` joins the two on the item id and computes every metric overall
and per product, per difficulty (defect-free items under the key 'none'), per kind ('image' or
'sequence') and per route (answered after an operation or from the whole frame alone), plus the
confusion of labelled against answered types. Everything here is a pure function of its
inputs; nothing imports matplotlib or torch. An item counts as *defective* when its type is
anything but 'none': a model answer that is garbage or missing ('unanswered') is therefore a
reject and never a correct type.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.errors import FovealError
from foveal.plant.dataset import BoxN, Label

UNANSWERED = "unanswered"  # the defect_type stored for a prediction whose model gave no answer
DEFAULT_MAX_ESCAPE = 0.01  # the escape rate at which the false-reject rate is read off
BOX_TOLERANCE = 0.005  # slack on each side, as a share of the frame, when checking box cover
IMAGE, SEQUENCE = "image", "sequence"  # keys of the by_kind breakdown
# keys of the by_route breakdown: did the model look closer before it answered?
ZOOMED, WHOLE_FRAME = "after an operation", "whole frame only"
OTHER_ANSWER = "other"  # confusion column of an answer outside the taxonomy (garbage text)
UNKNOWN_DIFFICULTY = "unknown"  # difficulty key of a defective item whose label has none
DIFFICULTY_ORDER = ("easy", "hard", "tiny", NO_DEFECT, UNKNOWN_DIFFICULTY)
_EPS = 1e-9


class EvaluationError(FovealError):
    """Labels and predictions do not fit together (missing, extra or duplicate ids)."""


@dataclass(frozen=True)
class Prediction:
    """What the model said about one item, with the cost of saying it."""

    item_id: str
    defect_type: str  # 'none' = good part; any other string (garbage, 'unanswered') = a reject
    defect_score: float  # P(defective) = 1 - P('none'); the threshold sweep runs over it
    confidence: float
    bbox: BoxN | None  # evidence box normalized to the original frame (last successful crop)
    bbox_frame: int | None  # sequences: 0-based frame the evidence box is in; None for images
    operations: int  # executed operations, successful or not
    operation_errors: int  # of which came back as an execution error
    latency_ms: float
    # the verdict was `uncertain`: the answer's confidence fell below the line's threshold, so a
    # person decides (its answer still counts in every other metric)
    uncertain: bool = False

    def __post_init__(self) -> None:
        if not self.item_id:
            raise ValueError("a prediction needs an item_id")
        for name in ("defect_score", "confidence"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{self.item_id}: {name} {value!r} is not a probability")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0.0):
            raise ValueError(f"{self.item_id}: latency_ms {self.latency_ms!r} is not a duration")
        if not 0 <= self.operation_errors <= self.operations:
            raise ValueError(f"{self.item_id}: needs 0 <= operation_errors <= operations, got "
                             f"{self.operation_errors} of {self.operations}")
        if self.bbox is not None:
            x1, y1, x2, y2 = self.bbox
            if not (all(math.isfinite(v) for v in self.bbox) and x1 < x2 and y1 < y2):
                raise ValueError(f"{self.item_id}: bbox {self.bbox} is not an (x1, y1, x2, y2) box")
        if self.bbox_frame is not None and self.bbox_frame < 0:
            raise ValueError(f"{self.item_id}: bbox_frame {self.bbox_frame} is negative")


class GroupMetrics(BaseModel):
    """Every metric for one group of items; a rate is None where its denominator is empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    n_defective: int
    n_good: int
    precision: float | None  # of "defective" answers, how many are defective
    recall: float | None  # of defective items, how many were answered "defective"
    image_f1: float | None
    escape_rate: float | None  # defective items answered 'none' / defective items
    false_reject_rate: float | None  # good items answered anything but 'none' / good items
    false_reject_at_escape: float | None  # lowest false reject by score at escape <= max_escape
    threshold: float | None  # the score threshold (reject when score >= it) that reaches it
    type_accuracy: float | None  # defective items whose answered type is the true type
    overall_accuracy: float  # all items whose answered type is the true type ('none' included)
    box_hit_rate: float | None  # detected defective items with a box: box covers the label's
    box_coverage: float | None  # detected defective items that have an evidence box at all
    rapr: float  # items with at least one executed operation / items
    operation_error_rate: float | None  # operation errors / operations
    latency_p50_ms: float
    latency_p95_ms: float
    # verdicts left to a person (`uncertain`) / items, and the overall accuracy of the others:
    # what the line decides on its own and how well (None in reports written before they existed)
    uncertain_share: float | None = None
    confident_accuracy: float | None = None


class Metrics(BaseModel):
    """The result of `evaluate`: overall, the breakdowns, and the overall threshold curve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_escape: float
    overall: GroupMetrics
    by_product: dict[str, GroupMetrics]
    by_difficulty: dict[str, GroupMetrics]
    by_kind: dict[str, GroupMetrics]
    curve: list[tuple[float, float]]  # (escape, false_reject), one point per distinct threshold
    threshold: float | None  # = overall.threshold
    # 95 % percentile-bootstrap intervals of the headline overall metrics over the items
    # (`bootstrap_intervals`); greedy decoding makes a rerun give the same numbers, so this is the
    # spread a comparison between two models must beat. Empty in reports written before it existed.
    intervals: dict[str, tuple[float, float]] = {}
    # The items split by what the model did: answered after at least one executed operation, or
    # from the whole frame alone; the same metrics per route. Empty in older reports.
    by_route: dict[str, GroupMetrics] = {}
    # confusion[labelled type][answered type] = items; the taxonomy's order, then any other
    # labelled types; answers outside the taxonomy count under 'other', no answer 'unanswered'.
    confusion: dict[str, dict[str, int]] = {}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) with keys in a stable order."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """Pretty JSON; `Metrics.from_json` reads it back."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Metrics:
        return cls.model_validate_json(text)


def is_defective(defect_type: str) -> bool:
    """Whether a type (label or answer) means a reject: anything but 'none'.

    >>> [is_defective(t) for t in ("none", "scratch", "unanswered", "banana")]
    [False, True, True, True]
    """
    return defect_type != NO_DEFECT


def correct_type(answered: str | None, truth: str) -> bool:
    """Whether an answer names the labelled type ('none' for a good part): the one judgement
    shared by the eval metrics and the RL reward (`foveal.training.rewards`).

    >>> correct_type("scratch", "scratch"), correct_type("none", "none"), correct_type(None, "none")
    (True, True, False)
    >>> correct_type("crack", "scratch"), correct_type("unanswered", "none")
    (False, False)
    """
    return answered is not None and answered == truth


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by.

    >>> ratio(1, 4), ratio(0, 0)
    (0.25, None)
    """
    return numerator / denominator if denominator else None


def detection_scores(truth: Sequence[bool], predicted: Sequence[bool]) -> tuple[
        float | None, float | None, float | None]:
    """(precision, recall, F1) of the positive class; each None where undefined.

    F1 = 2 tp / (2 tp + fp + fn), so a group without defective items has F1 0 if anything was
    rejected and None otherwise.

    >>> detection_scores([True, True, False, False], [True, False, True, False])
    (0.5, 0.5, 0.5)
    """
    tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
    fp = sum(p and not t for t, p in zip(truth, predicted, strict=True))
    fn = sum(t and not p for t, p in zip(truth, predicted, strict=True))
    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def threshold_curve(defective_scores: Sequence[float], good_scores: Sequence[float]) -> list[
        tuple[float, float, float]]:
    """(threshold, escape, false_reject) for every distinct score as threshold, ascending, then
    (inf, 1.0, 0.0). An item is rejected when its score >= threshold, so items with equal scores
    always fall on the same side (a tie is one threshold). Needs both lists non-empty.

    >>> threshold_curve([0.9, 0.5], [0.5, 0.1])
    [(0.1, 0.0, 1.0), (0.5, 0.0, 0.5), (0.9, 0.5, 0.0), (inf, 1.0, 0.0)]
    """
    if not defective_scores or not good_scores:
        raise ValueError("a threshold curve needs defective and good items")
    bad = np.sort(np.asarray(defective_scores, dtype=np.float64))
    good = np.sort(np.asarray(good_scores, dtype=np.float64))
    thresholds = np.unique(np.concatenate([bad, good]))
    escaped = np.searchsorted(bad, thresholds, side="left")  # defective with score < t
    rejected = len(good) - np.searchsorted(good, thresholds, side="left")  # good with score >= t
    points = [(float(t), int(e) / len(bad), int(r) / len(good))
              for t, e, r in zip(thresholds, escaped, rejected, strict=True)]
    return [*points, (math.inf, 1.0, 0.0)]


def false_reject_at_escape(defective_scores: Sequence[float], good_scores: Sequence[float],
                           max_escape: float = DEFAULT_MAX_ESCAPE) -> tuple[
        float | None, float | None]:
    """(lowest false-reject rate, its threshold) over thresholds whose escape rate is at most
    `max_escape`; among equal false-reject rates the lowest threshold (fewest escapes) wins.
    (None, None) without defective or without good items.

    >>> false_reject_at_escape([0.9, 0.5], [0.5, 0.1], max_escape=0.0)
    (0.5, 0.5)
    """
    if not 0.0 <= max_escape < 1.0:
        raise ValueError(f"max_escape {max_escape} must be in [0, 1)")
    if not defective_scores or not good_scores:
        return None, None
    n_defective = len(defective_scores)
    best: tuple[float, float] | None = None
    for threshold, escape, false_reject in threshold_curve(defective_scores, good_scores):
        # Compare counts, not rates, so 1 escape in 100 passes max_escape 0.01 despite rounding.
        if round(escape * n_defective) > max_escape * n_defective + _EPS:
            break  # escape only grows with the threshold
        if best is None or false_reject < best[0]:
            best = (false_reject, threshold)
    return best if best is not None else (None, None)


def box_covers(evidence: BoxN, truth: BoxN, tolerance: float = BOX_TOLERANCE) -> bool:
    """Whether `evidence` contains `truth`, each side allowed to fall short by `tolerance`.

    >>> box_covers((0.1, 0.1, 0.5, 0.5), (0.2, 0.2, 0.504, 0.3))
    True
    >>> box_covers((0.1, 0.1, 0.5, 0.5), (0.2, 0.2, 0.51, 0.3))
    False
    """
    ex1, ey1, ex2, ey2 = evidence
    tx1, ty1, tx2, ty2 = truth
    return (ex1 <= tx1 + tolerance + _EPS and ey1 <= ty1 + tolerance + _EPS
            and ex2 >= tx2 - tolerance - _EPS and ey2 >= ty2 - tolerance - _EPS)


def labelled_box(label: Label, prediction: Prediction) -> BoxN | None:
    """The labelled box the evidence box is judged against: the image's bbox, or for a sequence
    the box in the frame the evidence is in (None when that frame shows no defect or is unknown;
    a reviewed sequence knows only its `bbox` in frame `bbox_frame`)."""
    if not label.is_sequence:
        return label.bbox
    frame = prediction.bbox_frame
    if frame is None:
        return None
    if label.frame_boxes is None:  # a reviewed sequence: one box, in frame bbox_frame
        return label.bbox if frame == label.bbox_frame else None
    if not 0 <= frame < len(label.frame_boxes):
        return None
    return label.frame_boxes[frame]


def box_hit(label: Label, prediction: Prediction) -> bool:
    """Whether the prediction's evidence box covers the labelled box (False without either)."""
    truth = labelled_box(label, prediction)
    return prediction.bbox is not None and truth is not None and box_covers(prediction.bbox, truth)


def difficulty_key(label: Label) -> str:
    """'none' for a defect-free item, else its difficulty ('unknown' when the label has none)."""
    if not is_defective(label.defect_type):
        return NO_DEFECT
    return label.difficulty or UNKNOWN_DIFFICULTY


def kind_key(label: Label) -> str:
    """'sequence' or 'image'."""
    return SEQUENCE if label.is_sequence else IMAGE


def join(labels: Sequence[Label], predictions: Sequence[Prediction]) -> list[tuple[Label, Prediction]]:
    """Pair every label with its prediction, in label order; raise `EvaluationError` on a label
    without a prediction, a prediction without a label, or a duplicate id on either side."""
    by_id: dict[str, Prediction] = {}
    for prediction in predictions:
        if prediction.item_id in by_id:
            raise EvaluationError(f"two predictions for item {prediction.item_id!r}")
        by_id[prediction.item_id] = prediction
    label_ids = [label.id for label in labels]
    if len(set(label_ids)) != len(label_ids):
        dupes = sorted({i for i in label_ids if label_ids.count(i) > 1})
        raise EvaluationError(f"duplicate label ids: {', '.join(dupes[:5])}")
    missing = [i for i in label_ids if i not in by_id]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EvaluationError(f"{len(missing)} labelled item(s) have no prediction: "
                              f"{', '.join(missing[:5])}{more}")
    extra = sorted(set(by_id) - set(label_ids))
    if extra:
        raise EvaluationError(f"{len(extra)} prediction(s) have no label: {', '.join(extra[:5])}")
    return [(label, by_id[label.id]) for label in labels]


def group_metrics(pairs: Sequence[tuple[Label, Prediction]],
                  max_escape: float = DEFAULT_MAX_ESCAPE) -> GroupMetrics:
    """Every metric over one non-empty group of joined (label, prediction) pairs."""
    if not pairs:
        raise ValueError("group_metrics needs at least one item")
    truth = [is_defective(label.defect_type) for label, _ in pairs]
    answered = [is_defective(p.defect_type) for _, p in pairs]
    precision, recall, f1 = detection_scores(truth, answered)
    defective = [(label, p) for label, p in pairs if is_defective(label.defect_type)]
    good = [p for label, p in pairs if not is_defective(label.defect_type)]
    fr_at_escape, threshold = false_reject_at_escape(
        [p.defect_score for _, p in defective], [p.defect_score for p in good], max_escape)
    detected = [(label, p) for label, p in defective if is_defective(p.defect_type)]
    boxed = [(label, p) for label, p in detected if p.bbox is not None]
    operations = sum(p.operations for _, p in pairs)
    latencies = np.asarray([p.latency_ms for _, p in pairs], dtype=np.float64)
    return GroupMetrics(
        n=len(pairs),
        n_defective=len(defective),
        n_good=len(good),
        precision=precision,
        recall=recall,
        image_f1=f1,
        escape_rate=ratio(len(defective) - len(detected), len(defective)),
        false_reject_rate=ratio(sum(is_defective(p.defect_type) for p in good), len(good)),
        false_reject_at_escape=fr_at_escape,
        threshold=threshold,
        type_accuracy=ratio(sum(correct_type(p.defect_type, label.defect_type) for label, p in defective),
                            len(defective)),
        overall_accuracy=sum(correct_type(p.defect_type, label.defect_type)
                             for label, p in pairs) / len(pairs),
        box_hit_rate=ratio(sum(box_hit(label, p) for label, p in boxed), len(boxed)),
        box_coverage=ratio(len(boxed), len(detected)),
        rapr=sum(p.operations >= 1 for _, p in pairs) / len(pairs),
        operation_error_rate=ratio(sum(p.operation_errors for _, p in pairs), operations),
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p95_ms=float(np.percentile(latencies, 95)),
        uncertain_share=sum(p.uncertain for _, p in pairs) / len(pairs),
        confident_accuracy=ratio(sum(correct_type(p.defect_type, label.defect_type)
                                     for label, p in pairs if not p.uncertain),
                                 sum(not p.uncertain for _, p in pairs)),
    )


def route_key(prediction: Prediction) -> str:
    """ZOOMED when at least one operation was executed (successful or not), else WHOLE_FRAME."""
    return ZOOMED if prediction.operations >= 1 else WHOLE_FRAME


def type_confusion(pairs: Sequence[tuple[Label, Prediction]]) -> dict[str, dict[str, int]]:
    """Counts of answered type per labelled type, every row over the same columns: the
    taxonomy (`DEFECT_TYPES`) and any other labelled type, then 'unanswered' and 'other'
    (an answer that is none of those).

    >>> from foveal.plant.dataset import Label
    >>> good = Label(id="g", image="g.png", product="pcb", defect_type="none", width=8, height=8)
    >>> c = type_confusion([(good, Prediction("g", "banana", 0.9, 0.5, None, None, 0, 0, 1.0))])
    >>> c["none"]["other"], c["none"]["none"], list(c)[:2]
    (1, 0, ['none', 'scratch'])
    """
    extra = sorted({label.defect_type for label, _ in pairs} - set(DEFECT_TYPES))
    rows = [*DEFECT_TYPES, *extra]
    columns = [*rows, UNANSWERED, OTHER_ANSWER]
    table = {row: dict.fromkeys(columns, 0) for row in rows}
    for label, prediction in pairs:
        answer = prediction.defect_type if prediction.defect_type in columns else OTHER_ANSWER
        table[label.defect_type][answer] += 1
    return table


def _breakdown(pairs: Sequence[tuple[Label, Prediction]], key: Callable[[Label, Prediction], str],
               order: Sequence[str], max_escape: float) -> dict[str, GroupMetrics]:
    """Group metrics per key; keys listed in `order` first in that order, the rest sorted."""
    groups: dict[str, list[tuple[Label, Prediction]]] = defaultdict(list)
    for label, prediction in pairs:
        groups[key(label, prediction)].append((label, prediction))
    rank = {name: i for i, name in enumerate(order)}
    keys = sorted(groups, key=lambda k: (rank.get(k, len(rank)), k))
    return {k: group_metrics(groups[k], max_escape) for k in keys}


INTERVAL_METRICS = ("image_f1", "type_accuracy", "false_reject_at_escape", "overall_accuracy", "rapr")
BOOTSTRAP_RESAMPLES = 1000


def bootstrap_intervals(pairs: Sequence[tuple[Label, Prediction]], *, max_escape: float = DEFAULT_MAX_ESCAPE,
                        resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of `INTERVAL_METRICS` over the items: resample the items
    with replacement `resamples` times (seeded, so a report is reproducible), recompute each
    metric, keep the central `level` of its values. A metric undefined in a resample (no
    defective item drawn) is left out of that metric's values."""
    if not pairs:
        return {}
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in INTERVAL_METRICS}
    for _ in range(resamples):
        drawn = [pairs[i] for i in rng.integers(0, len(pairs), len(pairs))]
        group = group_metrics(drawn, max_escape)
        for name in INTERVAL_METRICS:
            value = getattr(group, name)
            if value is not None:
                values[name].append(float(value))
    tail = (1.0 - level) / 2.0 * 100.0
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)))
            for name, v in values.items() if v}


def paired_differences(labels: Sequence[Label], before: Sequence[Prediction], after: Sequence[Prediction],
                       *, max_escape: float = DEFAULT_MAX_ESCAPE, resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """`after` minus `before` on the same items, per `INTERVAL_METRICS` metric: (difference, low,
    high), the interval a percentile bootstrap that draws the same items for both gives. A
    difference counts only when its interval leaves out 0: the two models met the same items,
    so this is narrower than comparing their own intervals."""
    first, second = join(labels, before), join(labels, after)
    if not first:
        return {}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in INTERVAL_METRICS}
    for _ in range(resamples):
        drawn = rng.integers(0, len(first), len(first))
        a = group_metrics([first[i] for i in drawn], max_escape)
        b = group_metrics([second[i] for i in drawn], max_escape)
        for name in INTERVAL_METRICS:
            va, vb = getattr(a, name), getattr(b, name)
            if va is not None and vb is not None:
                values[name].append(float(vb) - float(va))
    whole_a, whole_b = group_metrics(first, max_escape), group_metrics(second, max_escape)
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, tuple[float, float, float]] = {}
    for name, v in values.items():
        va, vb = getattr(whole_a, name), getattr(whole_b, name)
        if v and va is not None and vb is not None:
            out[name] = (float(vb) - float(va), float(np.percentile(v, tail)),
                         float(np.percentile(v, 100.0 - tail)))
    return out


def evaluate(labels: Sequence[Label], predictions: Sequence[Prediction], *,
             max_escape: float = DEFAULT_MAX_ESCAPE, resamples: int = BOOTSTRAP_RESAMPLES) -> Metrics:
    """Join predictions to labels by id and compute all metrics, overall and per product,
    difficulty ('none' for defect-free items) and kind ('image' / 'sequence')."""
    if not labels:
        raise EvaluationError("no labels to evaluate")
    pairs = join(labels, predictions)
    overall = group_metrics(pairs, max_escape)
    defective = [p.defect_score for label, p in pairs if is_defective(label.defect_type)]
    good = [p.defect_score for label, p in pairs if not is_defective(label.defect_type)]
    curve = ([(escape, fr) for _, escape, fr in threshold_curve(defective, good)]
             if defective and good else [])
    return Metrics(
        max_escape=max_escape,
        overall=overall,
        by_product=_breakdown(pairs, lambda label, _: label.product, (), max_escape),
        by_difficulty=_breakdown(pairs, lambda label, _: difficulty_key(label), DIFFICULTY_ORDER, max_escape),
        by_kind=_breakdown(pairs, lambda label, _: kind_key(label), (IMAGE, SEQUENCE), max_escape),
        curve=curve,
        threshold=overall.threshold,
        intervals=bootstrap_intervals(pairs, max_escape=max_escape, resamples=resamples) if resamples else {},
        by_route=_breakdown(pairs, lambda _, prediction: route_key(prediction), (ZOOMED, WHOLE_FRAME),
                            max_escape),
        confusion=type_confusion(pairs),
    )
