"""Export of reviewed data (`GET /export`: the form and past exports; `POST /export`: write the
dataset under `<home>/exports/<name>/`, record the snapshot, answer with a zip of it)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import select

from foveal.dashboard import export as exporting
from foveal.dashboard.web import SignedIn, render, signed_in, state
from foveal.errors import DashboardError
from foveal.storage.models import DatasetSnapshot

router = APIRouter()


@router.get("/export", response_class=HTMLResponse)
def export_page(request: Request, user: SignedIn = Depends(signed_in)) -> HTMLResponse:
    with state(request).sessions() as session, session.begin():
        snapshots = list(session.scalars(select(DatasetSnapshot).where(DatasetSnapshot.source == "reviews")
                                         .order_by(DatasetSnapshot.id.desc()).limit(20)))
    return render(request, "export.html", user, snapshots=snapshots, formats=exporting.FORMATS)


def _day(raw: str | None) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        raise DashboardError(f"{raw!r} is not a date (YYYY-MM-DD)", 422) from None


@router.post("/export")
async def export_dataset(request: Request, format: str = Form("foveal"),
                         line: str | None = Form(None), product: str | None = Form(None),
                         since: str | None = Form(None), until: str | None = Form(None),
                         user: SignedIn = Depends(signed_in)) -> FileResponse:
    if format not in exporting.FORMATS:
        raise DashboardError(f"format {format!r} is not one of {', '.join(exporting.FORMATS)}", 422)
    dashboard = state(request)
    filters = exporting.ExportFilters(line or None, product or None, _day(since), _day(until))
    name = f"reviews-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{format}"
    folder = dashboard.settings.home_dir / "exports" / name

    def build() -> exporting.Exported:
        with dashboard.sessions() as session, session.begin():
            return exporting.export_reviews(session, dashboard.settings, format, folder, filters, name)

    done = await run_in_threadpool(build)
    archive = await run_in_threadpool(exporting.zip_folder, done.path, folder)
    return FileResponse(archive, media_type="application/zip", filename=archive.name,
                        headers={"X-Foveal-Items": str(done.items),
                                 "X-Foveal-Skipped": str(len(done.skipped))})
