"""The dashboard's app factory: `create_app(settings)` wires the database, the CSRF key, the
live-feed hub, templates, static files and the routers, and translates `DashboardError` (and
every other `FovealError`) into HTTP answers: a redirect to sign-in for pages, JSON for `/api/`,
an error page otherwise. Run it with `foveal serve dashboard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from foveal.dashboard import csrf
from foveal.dashboard.live import LiveHub
from foveal.dashboard.routes import admin, auth, export, media, queue, review, stats
from foveal.dashboard.web import Dashboard, csrf_guard, render
from foveal.errors import DashboardError, FovealError
from foveal.settings import Settings
from foveal.storage.database import make_engine, session_factory

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.postgres_url, pool_size=10, max_overflow=20)
    sessions = session_factory(engine)
    dashboard = Dashboard(settings=settings, sessions=sessions, key=csrf.secret_key(settings),
                          hub=LiveHub(settings.postgres_url, sessions))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(dashboard.hub.run(), name="live-feed")
        try:
            yield
        finally:
            dashboard.hub.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            engine.dispose()

    app = FastAPI(title="foveal review dashboard", lifespan=lifespan, dependencies=[Depends(csrf_guard)],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dashboard = dashboard
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for module in (auth, queue, review, media, stats, admin, export):
        app.include_router(module.router)
    app.add_exception_handler(FovealError, _error)  # type: ignore[arg-type]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True, "live_feed": dashboard.hub.listening.is_set()}

    return app


async def _error(request: Request, exc: FovealError) -> Response:
    status = exc.status_code if isinstance(exc, DashboardError) else 500
    if status >= 500:
        log.error("dashboard: %s %s: %s", request.method, request.url.path, exc)
    accept = request.headers.get("accept", "")
    wants_json = request.url.path.startswith("/api/") or "text/html" not in accept
    if status == 401 and request.method == "GET" and not wants_json:  # a page: go and sign in
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
    if wants_json or request.method != "GET":
        return JSONResponse({"error": str(exc)}, status_code=status)
    return render(request, "error.html", getattr(request.state, "user", None), status_code=status,
                  message=str(exc), status=status)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the dashboard under uvicorn until SIGINT / SIGTERM (open live streams are closed)."""
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(app, host=host or settings.dashboard_host, port=port or settings.dashboard_port,
                            log_config=None, access_log=False, timeout_graceful_shutdown=5,
                            proxy_headers=True)
    log.info("dashboard on http://%s:%d", config.host, config.port)
    uvicorn.Server(config).run()
