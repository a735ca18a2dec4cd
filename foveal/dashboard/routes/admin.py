"""Admin pages (role `admin` only): users (`/admin/users`: add, change role, disable or enable,
set a password) and per-line thresholds (`/admin/thresholds`: `ok` verdicts less confident than a
line's threshold join the review queue)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from foveal.dashboard import users
from foveal.dashboard.web import SignedIn, admin_only, render, state
from foveal.errors import DashboardError
from foveal.storage.models import Frame, LineThreshold

router = APIRouter(prefix="/admin")


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, user: SignedIn = Depends(admin_only)) -> HTMLResponse:
    with state(request).sessions() as session, session.begin():
        rows = users.list_users(session)
    return render(request, "admin_users.html", user, users=rows, roles=("reviewer", "admin"))


@router.post("/users")
def add_user(request: Request, username: str = Form(...), password: str = Form(...),
             role: str = Form("reviewer"), user: SignedIn = Depends(admin_only)) -> RedirectResponse:
    with state(request).sessions() as session, session.begin():
        users.add_user(session, username.strip(), password, role)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}")
def update_user(request: Request, user_id: int, role: str | None = Form(None),
                active: str | None = Form(None), password: str | None = Form(None),
                user: SignedIn = Depends(admin_only)) -> RedirectResponse:
    if user_id == user.id and (active == "false" or (role and role != "admin")):
        raise DashboardError("you cannot disable or demote yourself; ask another admin", 409)
    with state(request).sessions() as session, session.begin():
        users.update_user(session, user_id, role=role or None,
                          active=None if active is None else active == "true", password=password or None)
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/thresholds", response_class=HTMLResponse)
def thresholds_page(request: Request, user: SignedIn = Depends(admin_only)) -> HTMLResponse:
    with state(request).sessions() as session, session.begin():
        rows = list(session.scalars(select(LineThreshold).order_by(LineThreshold.line)))
        lines = list(session.scalars(select(Frame.line).distinct().order_by(Frame.line)))
    return render(request, "admin_thresholds.html", user, thresholds=rows, lines=lines)


@router.post("/thresholds")
def set_threshold(request: Request, line: str = Form(...), review_below: float = Form(...),
                  user: SignedIn = Depends(admin_only)) -> RedirectResponse:
    line = line.strip()
    if not line or not 0.0 <= review_below <= 1.0:
        raise DashboardError("a threshold needs a line and a value between 0 and 1", 422)
    values = dict(line=line, review_below=review_below, updated_by=user.username,
                  updated_at=datetime.now(UTC))
    statement = insert(LineThreshold).values(values).on_conflict_do_update(
        index_elements=[LineThreshold.line], set_={k: v for k, v in values.items() if k != "line"})
    with state(request).sessions() as session, session.begin():
        session.execute(statement)
    return RedirectResponse("/admin/thresholds", status_code=303)


@router.post("/thresholds/{line}/delete")
def delete_threshold(request: Request, line: str,
                     user: SignedIn = Depends(admin_only)) -> RedirectResponse:
    with state(request).sessions() as session, session.begin():
        session.execute(delete(LineThreshold).where(LineThreshold.line == line))
    return RedirectResponse("/admin/thresholds", status_code=303)
