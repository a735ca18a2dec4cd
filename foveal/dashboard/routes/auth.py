"""Sign-in and sign-out: `GET /login` (the form), `POST /login` (argon2 check, a new server-side
session in an HttpOnly SameSite=Lax cookie), `POST /logout` (the session row is deleted)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from foveal.dashboard import users
from foveal.dashboard.web import SESSION_COOKIE, SignedIn, render, signed_in, state

router = APIRouter()


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an absolute URL another site could inject.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login", response_model=None)
def login(request: Request, username: str = Form(...), password: str = Form(...),
          next: str = Form("/")) -> Response:
    dashboard = state(request)
    with dashboard.sessions() as session, session.begin():
        user = users.authenticate(session, username.strip(), password)
        hours = dashboard.settings.dashboard_session_hours
        token = users.open_session(session, user, hours) if user else None
    if token is None:
        return render(request, "login.html", None, status_code=401, next=_safe_next(next),
                      error="Wrong username or password, or the account is disabled.")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                        secure=dashboard.settings.dashboard_secure_cookies,
                        max_age=int(dashboard.settings.dashboard_session_hours * 3600))
    return response


@router.post("/logout")
def logout(request: Request, user: SignedIn = Depends(signed_in)) -> RedirectResponse:
    with state(request).sessions() as session, session.begin():
        users.close_session(session, user.token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
