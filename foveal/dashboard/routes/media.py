"""Images for the review page: `GET /media/frames/{inspection_id}` (the full frame, read from the
blob store through `foveal.blobs`, which verifies it) and `GET /media/crops/{crop_id}` (an
evidence crop, from PostgreSQL). Both need a session; both may be cached by the browser, the
bytes behind an id never change."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from foveal import blobs
from foveal.dashboard.web import SignedIn, signed_in, state
from foveal.errors import DashboardError
from foveal.storage.models import EvidenceCrop, Frame, Inspection

router = APIRouter()
CACHE = {"Cache-Control": "private, max-age=86400, immutable"}


@router.get("/media/frames/{inspection_id}")
async def frame_image(request: Request, inspection_id: int,
                      user: SignedIn = Depends(signed_in)) -> Response:
    dashboard = state(request)

    def read() -> tuple[bytes, str]:
        with dashboard.sessions() as session, session.begin():
            row = session.execute(select(Frame.blob_key, Frame.mime_type)
                                  .join(Inspection, Inspection.frame_id == Frame.frame_id)
                                  .where(Inspection.id == inspection_id)).one_or_none()
        if row is None or row.blob_key is None:
            raise DashboardError(f"inspection {inspection_id} has no stored frame image", 404)
        try:
            return blobs.fetch(dashboard.settings, row.blob_key), row.mime_type
        except blobs.BlobError as exc:
            raise DashboardError(f"frame image of inspection {inspection_id}: {exc}", 404) from exc

    data, mime_type = await run_in_threadpool(read)
    return Response(data, media_type=mime_type, headers=CACHE)


@router.get("/media/crops/{crop_id}")
def crop_image(request: Request, crop_id: int, user: SignedIn = Depends(signed_in)) -> Response:
    with state(request).sessions() as session, session.begin():
        row = session.execute(select(EvidenceCrop.image, EvidenceCrop.mime_type)
                              .where(EvidenceCrop.id == crop_id)).one_or_none()
    if row is None:
        raise DashboardError(f"no evidence crop {crop_id}", 404)
    return Response(row.image, media_type=row.mime_type, headers=CACHE)
