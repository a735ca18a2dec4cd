"""The inspection page (`GET /inspections/{id}`, with previous / next in the queue order of the
filters it was opened from) and the review actions: `POST /api/inspections/{id}/reviews` (JSON,
what the page's keyboard shortcuts send) and `POST /inspections/{id}/reviews` (a plain form, for
browsers without JavaScript). Both need a session and the CSRF token; both are idempotent on the
client's `request_id`."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from foveal.dashboard import inspection as view
from foveal.dashboard import queue as q
from foveal.dashboard.reviews import ReviewRequest, record_review
from foveal.dashboard.web import SignedIn, render, signed_in, state
from foveal.errors import DashboardError
from foveal.storage.models import REVIEW_ACTIONS

router = APIRouter()


class ReviewBody(BaseModel):
    """A review action as the page sends it; `request_id` is generated once per intended action."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(pattern="^(" + "|".join(REVIEW_ACTIONS) + ")$")
    request_id: uuid.UUID
    defect_type: str | None = Field(None, max_length=64)
    box: tuple[float, float, float, float] | None = None
    note: str | None = Field(None, max_length=2000)


def _save(request: Request, inspection_id: int, user: SignedIn, body: ReviewRequest) -> dict[str, Any]:
    dashboard = state(request)
    with dashboard.sessions() as session, session.begin():
        review, created = record_review(session, inspection_id, user.username, body, dashboard.taxonomy)
        filters = q.QueueFilters.parse(dict(request.query_params))
        key = q.cursor_of(session, inspection_id)
        following = q.neighbour(session, filters, key, True) if key else None
        return {"review_id": review.id, "created": created, "action": review.action,
                "verdict": review.corrected_verdict, "defect_type": review.corrected_type,
                "reviewer": review.reviewer, "reviewed_at": review.reviewed_at.isoformat(),
                "next": following}


@router.get("/inspections/{inspection_id}", response_class=HTMLResponse)
def inspection_page(request: Request, inspection_id: int,
                    user: SignedIn = Depends(signed_in)) -> HTMLResponse:
    filters = q.QueueFilters.parse(dict(request.query_params))
    with state(request).sessions() as session, session.begin():
        item = view.load(session, inspection_id)
        if item is None:
            raise DashboardError(f"no inspection {inspection_id}", 404)
        key = q.cursor_of(session, inspection_id)
        prev_id = q.neighbour(session, filters, key, False) if key else None
        next_id = q.neighbour(session, filters, key, True) if key else None
    query = urlencode(filters.query())
    return render(request, "inspection.html", user, item=item, prev_id=prev_id, next_id=next_id,
                  query=query, filters=filters, form_request_id=uuid.uuid4())


@router.post("/api/inspections/{inspection_id}/reviews")
def review_json(request: Request, inspection_id: int, body: ReviewBody,
                user: SignedIn = Depends(signed_in)) -> dict[str, Any]:
    return _save(request, inspection_id, user, ReviewRequest(
        body.action, body.request_id, body.defect_type, body.box, body.note))


@router.post("/inspections/{inspection_id}/reviews")
def review_form(request: Request, inspection_id: int, action: str = Form(...),
                request_id: uuid.UUID = Form(...), defect_type: str | None = Form(None),
                note: str | None = Form(None),
                user: SignedIn = Depends(signed_in)) -> RedirectResponse:
    saved = _save(request, inspection_id, user, ReviewRequest(action, request_id, defect_type or None,
                                                              None, note))
    query = urlencode(q.QueueFilters.parse(dict(request.query_params)).query())
    target = saved["next"] or inspection_id
    return RedirectResponse(f"/inspections/{target}" + (f"?{query}" if query else ""), status_code=303)
