"""What every dashboard request shares: the app's state, who is signed in, the CSRF guard and
page rendering.

`signed_in` resolves the session cookie to a user (401 without one; pages turn that into a
redirect to the sign-in form); `admin_only` adds the role check. `csrf_guard` runs on every
route of the app and refuses any state-changing method (POST, PUT, PATCH, DELETE) whose
`X-CSRF-Token` header or `csrf_token` form field is not the HMAC of the browser's cookie seed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from foveal.dashboard import csrf, users
from foveal.dashboard.live import LiveHub
from foveal.domain import Taxonomy
from foveal.errors import DashboardError
from foveal.settings import Settings

SESSION_COOKIE = "foveal_session"
ANON_COOKIE = "foveal_anon"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TEMPLATES = Path(__file__).parent / "templates"
CHOICES_TTL_S = 30.0


@dataclass
class Dashboard:
    """Everything the routes need, built once by `create_app`."""

    settings: Settings
    sessions: sessionmaker[Session]
    key: bytes
    hub: LiveHub
    taxonomy: Taxonomy = field(default_factory=Taxonomy)
    templates: Jinja2Templates = field(default_factory=lambda: Jinja2Templates(directory=str(TEMPLATES)))
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def cached(self, name: str, build: Callable[[], Any]) -> Any:
        """`build()`'s value, reused for CHOICES_TTL_S (filter menus need not be live)."""
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < CHOICES_TTL_S:
            return hit[1]
        value = build()
        self._cache[name] = (time.monotonic(), value)
        return value


@dataclass(frozen=True)
class SignedIn:
    id: int
    username: str
    role: str
    token: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def state(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _seed(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(ANON_COOKIE)


def csrf_token(request: Request) -> str:
    """The token forms on this page must carry; creates the anonymous seed when there is none."""
    seed = _seed(request)
    if seed is None:
        seed = getattr(request.state, "new_anon", None) or secrets.token_urlsafe(24)
        request.state.new_anon = seed
    return csrf.token_for(state(request).key, seed)


async def csrf_guard(request: Request) -> None:
    if request.method in SAFE_METHODS:
        return
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get("csrf_token")
        given = value if isinstance(value, str) else None
    if not csrf.valid(state(request).key, _seed(request), given):
        raise DashboardError("CSRF token missing or wrong: reload the page and try again", 403)


def signed_in(request: Request) -> SignedIn:
    cached: SignedIn | None = getattr(request.state, "user", None)
    if cached is not None:
        return cached
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with state(request).sessions() as session, session.begin():
            user = users.session_user(session, token)
            if user is not None:
                who = SignedIn(user.id, user.username, user.role, token)
                request.state.user = who
                return who
    raise DashboardError("sign in first", 401)


def admin_only(user: SignedIn = Depends(signed_in)) -> SignedIn:
    if not user.is_admin:
        raise DashboardError("only an admin may do this", 403)
    return user


def render(request: Request, template: str, user: SignedIn | None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    dashboard = state(request)
    token = csrf_token(request)
    response = dashboard.templates.TemplateResponse(
        request, template, {"user": user, "csrf_token": token, "taxonomy": dashboard.taxonomy.names,
                            **context}, status_code=status_code)
    remember_anon(request, response)
    return response


def remember_anon(request: Request, response: Response) -> None:
    seed = getattr(request.state, "new_anon", None)
    if seed is not None:
        response.set_cookie(ANON_COOKIE, seed, httponly=True, samesite="lax",
                            secure=state(request).settings.dashboard_secure_cookies)
