"""The statistics page (`GET /stats?since=YYYY-MM-DD&until=YYYY-MM-DD`): charts of defect rates,
false-reject rate, RaPR and operations, latency, and the model-vs-reviewer confusion matrix."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from foveal.dashboard import charts
from foveal.dashboard import stats as figures
from foveal.dashboard.web import SignedIn, render, signed_in, state
from foveal.errors import DashboardError

router = APIRouter()


def _day(raw: str | None, name: str) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        raise DashboardError(f"{name}: {raw!r} is not a date (YYYY-MM-DD)", 422) from None


@router.get("/stats", response_class=HTMLResponse)
def stats_page(request: Request, since: str | None = None, until: str | None = None,
               user: SignedIn = Depends(signed_in)) -> HTMLResponse:
    with state(request).sessions() as session, session.begin():
        window = figures.Window.around(session, _day(since, "since"), _day(until, "until"))
        data = figures.compute(session, window)
    b = window.bucket

    def ms(v: float) -> str:
        return f"{v:.0f} ms"

    def number(v: float) -> str:
        return f"{v:.2f}"

    ops = "operations / inspection"
    chart = {
        "line": charts.line_chart(data.defect_rate_by_line.buckets, data.defect_rate_by_line.values, bucket=b,
                                  title="defect rate per line"),
        "type": charts.line_chart(data.defect_rate_by_type.buckets, data.defect_rate_by_type.values, bucket=b,
                                  title="defect rate per type"),
        "false_reject": charts.line_chart(data.false_reject.buckets, data.false_reject.values, bucket=b,
                                          y_max=1.0, title="false-reject rate"),
        "rapr": charts.line_chart(data.rapr.buckets, {"RaPR": data.rapr.values.get("RaPR", {})}, bucket=b,
                                  y_max=1.0, title="RaPR"),
        "ops": charts.line_chart(data.rapr.buckets, {ops: data.rapr.values.get(ops, {})}, bucket=b,
                                 fmt=number, title="operations per inspection"),
        "latency": charts.line_chart(data.latency.buckets, data.latency.values, bucket=b, fmt=ms,
                                     title="latency"),
    }
    return render(request, "stats.html", user, data=data, chart=chart, heat=charts.heat_color,
                  since=since or "", until=until or "", percent=charts.percent)
