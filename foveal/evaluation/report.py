"""Write an evaluation run to a folder: `metrics.json`, `report.md` with the acceptance bars
checked, and PNG figures (false reject against escape, RaPR per difficulty, accuracy per
product, the type confusion); `write_predictions` adds the per-item records. Other runs (say
a `--no-ops` ablation) can be passed in `compare` and appear as extra columns and series; the
key 'no-ops' also enables the ablation bar.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foveal.evaluation.metrics import GroupMetrics, Metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CURVE_FIGURE = "false_reject_curve.png"
RAPR_FIGURE = "rapr_by_difficulty.png"
ACCURACY_FIGURE = "accuracy_by_product.png"
CONFUSION_FIGURE = "type_confusion.png"
PREDICTIONS_FILE = "predictions.jsonl"  # one `foveal predict` object per item, with its label
NO_OPS = "no-ops"  # the compare key of the run without pixel operations

MIN_IMAGE_F1 = 0.97
MAX_FALSE_REJECT = 0.02
MIN_TYPE_ACCURACY = 0.95
MIN_BOX_HIT = 0.95
MIN_RAPR_HARD = 0.9  # tiny and hard defects
MAX_RAPR_EASY = 0.3
MIN_NO_OPS_DROP = 0.15  # type accuracy without operations is at least 15 points lower

PASS, FAIL = "✅", "❌"


@dataclass(frozen=True)
class BarResult:
    """One acceptance bar: its name, the target as text, the measured value, and the verdict."""

    name: str
    target: str
    value: float | None
    passed: bool
    unit: str = ""  # "" for a rate, "pts" for a difference in percentage points

    @property
    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        if self.unit == "pts":
            return f"{self.value * 100:+.1f} pts"
        return f"{self.value:.3f}"


def _bar(name: str, value: float | None, compare: Callable[[float, float], bool], limit: float,
         unit: str = "") -> BarResult:
    sign = "≥" if compare is operator.ge else "≤"
    target = f"{sign} {limit * 100:.0f} pts" if unit == "pts" else f"{sign} {limit:g}"
    return BarResult(name, target, value, value is not None and compare(value, limit), unit)


def check_bars(metrics: Metrics, compare: Mapping[str, Metrics] | None = None) -> list[BarResult]:
    """The acceptance bars of a run; a bar whose value is undefined fails."""
    overall = metrics.overall

    def rapr(difficulty: str) -> float | None:
        group = metrics.by_difficulty.get(difficulty)
        return group.rapr if group is not None else None

    escape = f"{metrics.max_escape * 100:g} %"
    bars = [
        _bar("Image F1", overall.image_f1, operator.ge, MIN_IMAGE_F1),
        _bar(f"False reject at ≤ {escape} escape", overall.false_reject_at_escape, operator.le,
             MAX_FALSE_REJECT),
        _bar("Defect-type accuracy", overall.type_accuracy, operator.ge, MIN_TYPE_ACCURACY),
        _bar("Box hit rate", overall.box_hit_rate, operator.ge, MIN_BOX_HIT),
        _bar("RaPR tiny", rapr("tiny"), operator.ge, MIN_RAPR_HARD),
        _bar("RaPR hard", rapr("hard"), operator.ge, MIN_RAPR_HARD),
        _bar("RaPR easy", rapr("easy"), operator.le, MAX_RAPR_EASY),
    ]
    if compare and NO_OPS in compare:
        with_ops, without = overall.type_accuracy, compare[NO_OPS].overall.type_accuracy
        drop = with_ops - without if with_ops is not None and without is not None else None
        bars.append(_bar("No-ops type accuracy lower by", drop, operator.ge, MIN_NO_OPS_DROP, "pts"))
    return bars


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


# (row title, how to read and format it from a group) for the overall table.
_OVERALL_ROWS: list[tuple[str, Callable[[GroupMetrics], str]]] = [
    ("items", lambda g: _fmt(g.n)),
    ("defective / good", lambda g: f"{g.n_defective} / {g.n_good}"),
    ("image F1", lambda g: _fmt(g.image_f1)),
    ("precision", lambda g: _fmt(g.precision)),
    ("recall", lambda g: _fmt(g.recall)),
    ("escape rate (answers)", lambda g: _fmt(g.escape_rate)),
    ("false-reject rate (answers)", lambda g: _fmt(g.false_reject_rate)),
    ("false reject at escape bound", lambda g: _fmt(g.false_reject_at_escape)),
    ("score threshold", lambda g: _fmt(g.threshold, 4)),
    ("defect-type accuracy", lambda g: _fmt(g.type_accuracy)),
    ("overall accuracy", lambda g: _fmt(g.overall_accuracy)),
    ("uncertain verdicts (left to a person)", lambda g: _fmt(g.uncertain_share)),
    ("overall accuracy of the other verdicts", lambda g: _fmt(g.confident_accuracy)),
    ("box hit rate", lambda g: _fmt(g.box_hit_rate)),
    ("box coverage", lambda g: _fmt(g.box_coverage)),
    ("RaPR", lambda g: _fmt(g.rapr)),
    ("operation error rate", lambda g: _fmt(g.operation_error_rate)),
    ("latency p50 ms", lambda g: _fmt(g.latency_p50_ms, 0)),
    ("latency p95 ms", lambda g: _fmt(g.latency_p95_ms, 0)),
]

_GROUP_HEADER = ["n", "defective", "F1", "FR at escape", "type acc", "overall acc", "box hit",
                 "RaPR", "op errors", "p95 ms"]


def _group_row(g: GroupMetrics) -> list[str]:
    return [str(g.n), str(g.n_defective), _fmt(g.image_f1), _fmt(g.false_reject_at_escape),
            _fmt(g.type_accuracy), _fmt(g.overall_accuracy), _fmt(g.box_hit_rate), _fmt(g.rapr),
            _fmt(g.operation_error_rate), _fmt(g.latency_p95_ms, 0)]


def _breakdown_table(first: str, groups: Mapping[str, GroupMetrics]) -> list[str]:
    return _table([first, *_GROUP_HEADER], [[key, *_group_row(g)] for key, g in groups.items()])


def render_markdown(metrics: Metrics, *, title: str, meta: Mapping[str, str],
                    compare: Mapping[str, Metrics] | None = None) -> str:
    """The text of report.md (figures referenced by their file names)."""
    compare = dict(compare or {})
    bars = check_bars(metrics, compare)
    passed = sum(b.passed for b in bars)
    lines = [f"# {title}", ""]
    if meta:
        lines += _table(["Key", "Value"], [[k, v] for k, v in meta.items()])
    lines += [f"## Bars: {passed} of {len(bars)} met", ""]
    lines += _table(["Bar", "Target", "Value", "Met"],
                    [[b.name, b.target, b.shown, PASS if b.passed else FAIL] for b in bars])
    runs = {"this run": metrics, **compare}
    lines += ["## Overall", ""]
    lines += _table(["Metric", *runs],
                    [[name, *(read(run.overall) for run in runs.values())] for name, read in _OVERALL_ROWS])
    if metrics.intervals:
        lines += ["## Spread (95 % bootstrap intervals over the items)", "",
                  "Greedy decoding repeats itself, so a rerun of this evaluation gives the same "
                  "numbers; the spread that matters is which items were drawn. A difference between "
                  "two models smaller than these intervals is not a measured difference.", ""]
        overall = metrics.overall.model_dump()
        lines += _table(["Metric", "Value", "95 % interval"],
                        [[name.replace("_", " "), _fmt(overall.get(name)), f"{low:.3f} – {high:.3f}"]
                         for name, (low, high) in metrics.intervals.items()])
    lines += ["## Per product", "", *_breakdown_table("Product", metrics.by_product)]
    lines += ["## Per difficulty", "", "Defect-free items are the group `none`.", ""]
    lines += _breakdown_table("Difficulty", metrics.by_difficulty)
    lines += ["## Per kind", "", *_breakdown_table("Kind", metrics.by_kind)]
    if metrics.by_route:
        lines += ["## Per route", "",
                  "Did the model look closer before it answered? Items answered after at least one "
                  "executed operation, against those answered from the whole frame alone.", ""]
        lines += _breakdown_table("Route", metrics.by_route)
    if metrics.confusion:
        lines += ["## Defect types: labelled (rows) against answered (columns)", "",
                  *_confusion_table(metrics.confusion)]
    lines += [
        "## Figures", "",
        f"![False reject against escape]({CURVE_FIGURE})", "",
        f"![RaPR per difficulty]({RAPR_FIGURE})", "",
        f"![Accuracy per product]({ACCURACY_FIGURE})", "",
        *([f"![Type confusion]({CONFUSION_FIGURE})", ""] if metrics.confusion else []),
        f"False reject at escape: the lowest share of good parts rejected over score thresholds "
        f"that let at most {metrics.max_escape:.1%} of defective parts through. RaPR: share of "
        f"items with at least one executed pixel operation.", "",
    ]
    return "\n".join(lines)


def _confusion_table(confusion: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Rows with at least one item; columns that hold at least one answer; the row's accuracy."""
    rows = {t: row for t, row in confusion.items() if sum(row.values())}
    columns = [c for c in next(iter(confusion.values()), {}) if any(row.get(c) for row in rows.values())]
    body = [[t, *(str(row[c]) for c in columns), str(sum(row.values())),
             _fmt(row.get(t, 0) / sum(row.values()))] for t, row in rows.items()]
    return _table(["labelled \\ answered", *columns, "items", "right"], body)


def _per_key(runs: Mapping[str, Metrics], keys: Sequence[str],
             groups: Callable[[Metrics], Mapping[str, GroupMetrics]],
             field: Callable[[GroupMetrics], float | None]) -> dict[str, list[float]]:
    """Per run, `field` of the group under each key (NaN where the run lacks the group or value)."""
    out: dict[str, list[float]] = {}
    for name, run in runs.items():
        row = []
        for key in keys:
            group = groups(run).get(key)
            value = None if group is None else field(group)
            row.append(math.nan if value is None else value)
        out[name] = row
    return out


def write_figures(out_dir: Path, metrics: Metrics,
                  compare: Mapping[str, Metrics] | None = None) -> list[Path]:
    """Write the PNG figures into `out_dir` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    runs = {"this run": metrics, **dict(compare or {})}
    paths = [out_dir / CURVE_FIGURE, out_dir / RAPR_FIGURE, out_dir / ACCURACY_FIGURE]

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for name, run in runs.items():
        if run.curve:
            escapes, rejects = zip(*run.curve, strict=True)
            ax.plot(escapes, rejects, drawstyle="steps-post", marker=".", label=name)
    chosen = metrics.overall
    if chosen.false_reject_at_escape is not None:
        ax.plot([metrics.max_escape], [chosen.false_reject_at_escape], "o", color="black",
                label=f"chosen: {chosen.false_reject_at_escape:.3f} at t={chosen.threshold:.4f}")
    ax.axvline(metrics.max_escape, color="red", linestyle="--",
               label=f"{metrics.max_escape:.0%} escape")
    ax.axhline(MAX_FALSE_REJECT, color="grey", linestyle=":", label=f"{MAX_FALSE_REJECT:.0%} false reject")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("escape rate (defective parts passed)")
    ax.set_ylabel("false-reject rate (good parts rejected)")
    ax.set_title("False reject against escape")
    ax.legend(fontsize="small")
    fig.savefig(paths[0], dpi=100)

    def grouped_bars(ax: Axes, keys: Sequence[str], values: Mapping[str, list[float]]) -> None:
        width = 0.8 / max(len(values), 1)
        for i, (name, row) in enumerate(values.items()):
            xs = [k + (i - (len(values) - 1) / 2) * width for k in range(len(keys))]
            ax.bar(xs, row, width=width, label=name)
        ax.set_xticks(range(len(keys)), list(keys))
        ax.set_ylim(0.0, 1.05)

    difficulties = list(metrics.by_difficulty)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    grouped_bars(ax, difficulties, _per_key(runs, difficulties, lambda m: m.by_difficulty, lambda g: g.rapr))
    ax.axhline(MIN_RAPR_HARD, color="green", linestyle="--", label=f"tiny, hard ≥ {MIN_RAPR_HARD:g}")
    ax.axhline(MAX_RAPR_EASY, color="red", linestyle="--", label=f"easy ≤ {MAX_RAPR_EASY:g}")
    ax.set_ylabel("RaPR (items with ≥ 1 operation)")
    ax.set_title("Rate of pixel-space reasoning per difficulty")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)

    products = list(metrics.by_product)
    fig = Figure(figsize=(max(6.4, 1.2 * len(products) + 2), 6.4))
    top, bottom = fig.subplots(2, 1, sharex=True)
    grouped_bars(top, products,
                 _per_key(runs, products, lambda m: m.by_product, lambda g: g.type_accuracy))
    top.axhline(MIN_TYPE_ACCURACY, color="green", linestyle="--", label=f"≥ {MIN_TYPE_ACCURACY:g}")
    top.set_ylabel("defect-type accuracy")
    top.set_title("Accuracy per product")
    top.legend(fontsize="small", loc="lower right", ncol=len(runs) + 1)
    grouped_bars(bottom, products,
                 _per_key(runs, products, lambda m: m.by_product, lambda g: g.overall_accuracy))
    bottom.set_ylabel("overall accuracy")
    fig.autofmt_xdate(rotation=20)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    if metrics.confusion:
        paths.append(out_dir / CONFUSION_FIGURE)
        _confusion_figure(Figure(figsize=(7.2, 5.6)), metrics.confusion).savefig(paths[-1], dpi=100)
    return paths


def _confusion_figure(fig: Figure, confusion: Mapping[str, Mapping[str, int]]) -> Figure:
    """Each row's share of answers as colour, the count written in the cell."""
    import numpy as np

    rows = [t for t, row in confusion.items() if sum(row.values())]
    columns = [c for c in next(iter(confusion.values())) if any(confusion[t][c] for t in rows)]
    counts = np.array([[confusion[t][c] for c in columns] for t in rows], dtype=float)
    shares = counts / counts.sum(axis=1, keepdims=True)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize="small",
                        color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("answered")
    ax.set_ylabel("labelled")
    ax.set_title("Defect types: labelled against answered (share of the row)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def write_predictions(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """One JSON object per line (the per-item records of `evaluate_model`), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for item in records:
            out.write(json.dumps(item, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def write_report(out_dir: Path, metrics: Metrics, *, title: str, meta: dict[str, str],
                 compare: dict[str, Metrics] | None = None) -> Path:
    """Write metrics.json, report.md and the figures into `out_dir`; return report.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(metrics.to_json() + "\n", encoding="utf-8")
    write_figures(out_dir, metrics, compare)
    report = out_dir / REPORT_FILE
    report.write_text(render_markdown(metrics, title=title, meta=meta, compare=compare),
                      encoding="utf-8")
    return report
