"""The queue page (`GET /`), the same page as JSON (`GET /api/queue`) and the live feed
(`GET /live`, server-sent events; `Last-Event-ID` gets a catch-up first)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from foveal.dashboard import queue as q
from foveal.dashboard.web import SignedIn, render, signed_in, state
from foveal.errors import DashboardError

router = APIRouter()


def _page(request: Request) -> tuple[q.QueueFilters, q.QueuePage]:
    params = dict(request.query_params)
    filters = q.QueueFilters.parse(params)
    after = q.Cursor.decode(params["after"]) if params.get("after") else None
    before = q.Cursor.decode(params["before"]) if params.get("before") else None
    dashboard = state(request)
    with dashboard.sessions() as session, session.begin():
        page = q.queue_page(session, filters, after=after, before=before,
                            limit=dashboard.settings.dashboard_page_size)
    return filters, page


@router.get("/", response_class=HTMLResponse)
def queue_page(request: Request, user: SignedIn = Depends(signed_in)) -> HTMLResponse:
    filters, page = _page(request)
    dashboard = state(request)

    def choices() -> dict[str, list[str]]:
        with dashboard.sessions() as session, session.begin():
            return q.filter_choices(session)

    return render(request, "queue.html", user, filters=filters, page=page,
                  choices=dashboard.cached("choices", choices), query=filters.query(),
                  review_states=q.REVIEW_STATES)


@router.get("/api/queue")
def queue_json(request: Request, user: SignedIn = Depends(signed_in)) -> dict[str, Any]:
    _, page = _page(request)
    return {"rows": [dict(asdict(r), frame_id=str(r.frame_id), created_at=r.created_at.isoformat())
                     for r in page.rows],
            "next": page.next.encode() if page.next else None,
            "prev": page.prev.encode() if page.prev else None}


@router.get("/live")
async def live(request: Request, user: SignedIn = Depends(signed_in)) -> StreamingResponse:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        last = int(raw) if raw else None
    except ValueError:
        raise DashboardError(f"Last-Event-ID {str(raw)[:20]!r} is not an inspection id", 422) from None
    body = state(request).hub.stream(last, request.is_disconnected)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
