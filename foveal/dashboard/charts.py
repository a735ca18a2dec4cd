"""Charts as inline SVG, rendered on the server: no JavaScript library, no CDN, nothing to fetch
at runtime. `line_chart` draws one line per series over time buckets with axes, grid, a legend
and a `<title>` tooltip on every point; `heat_color` shades the confusion matrix cells.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
           "#475569", "#ea580c")
WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 22, 12, 28


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def _ticks(top: float, count: int = 4) -> list[float]:
    return [top * k / count for k in range(count + 1)]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000,
                 2000, 5000, 10000, 20000, 50000):
        if value <= step:
            return float(step)
    return value


def _bucket_label(moment: datetime, bucket: str) -> str:
    return moment.strftime("%H:%M" if bucket == "hour" else "%m-%d")


def line_chart(buckets: list[datetime], series: dict[str, dict[datetime, float]], *, bucket: str,
               fmt: Callable[[float], str] = percent, y_max: float | None = None, title: str = "") -> Markup:
    """An SVG line chart; a series' missing buckets are gaps, not zeros."""
    if not buckets or not series:
        return Markup('<p class="empty">No data in this window.</p>')
    top = y_max if y_max is not None else _nice_max(max(v for s in series.values() for v in s.values()))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(k: int) -> float:
        return LEFT + (plot_w * k / (len(buckets) - 1) if len(buckets) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(v, top) / top)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">']
    for tick in _ticks(top):
        level = f"{y(tick):.1f}"
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level}" y2="{level}"/>'
                     f'<text class="axis" x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f'{escape(fmt(tick))}</text>')
    step = max(1, len(buckets) // 6)
    for k in range(0, len(buckets), step):
        parts.append(f'<text class="axis" x="{x(k):.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                     f'{escape(_bucket_label(buckets[k], bucket))}</text>')
    for n, (name, values) in enumerate(sorted(series.items())):
        color = PALETTE[n % len(PALETTE)]
        points = [(k, values[b]) for k, b in enumerate(buckets) if b in values]
        path, prev = [], None
        for k, v in points:
            path.append(f"{'L' if prev == k - 1 else 'M'}{x(k):.1f},{y(v):.1f}")
            prev = k
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"/>')
        for k, v in points:
            parts.append(f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"><title>'
                         f'{escape(name)} {escape(_bucket_label(buckets[k], bucket))}: {escape(fmt(v))}'
                         f'</title></circle>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[n % len(PALETTE)]}"></i>'
                     f'{escape(name)}</span>' for n, name in enumerate(sorted(series)))
    # Every interpolated text above went through escape(); the rest are numbers and constants.
    return Markup("".join(parts) + f'<div class="legend">{legend}</div>')  # noqa: S704


def heat_color(count: int, row_total: int) -> str:
    """A blue whose strength is the cell's share of its row."""
    share = count / row_total if row_total else 0.0
    return f"rgba(37, 99, 235, {0.08 + 0.72 * share:.2f})" if count else "transparent"
