"""Images for the review page: `GET /media/frames/{inspection_id}` (the full frame, read from the
blob store through `foveal.blobs`, which verifies it), `GET /media/frames/{inspection_id}/{k}`
(frame k, 0-based, of a sequence, or 0 for a single image; 404 past the end) and
`GET /media/crops/{crop_id}` (an evidence crop, from PostgreSQL). All need a session; all may be
cached by the browser, the bytes behind an id never change."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import Select, select

from foveal import blobs
from foveal.dashboard.web import SignedIn, signed_in, state
from foveal.errors import DashboardError
from foveal.storage.models import EvidenceCrop, Frame, FrameBlob, Inspection

router = APIRouter()
CACHE = {"Cache-Control": "private, max-age=86400, immutable"}


async def _blob(request: Request, statement: Select[str | None, str], what: str) -> Response:
    """The blob that `statement` (blob key, mime type) names, verified, or 404 naming `what`."""
    dashboard = state(request)

    def read() -> tuple[bytes, str]:
        with dashboard.sessions() as session, session.begin():
            row = session.execute(statement).one_or_none()
        blob_key, mime_type = row if row is not None else (None, "")
        if blob_key is None:
            raise DashboardError(f"{what} is not stored", 404)
        try:
            return blobs.fetch(dashboard.settings, blob_key), mime_type
        except blobs.BlobError as exc:
            raise DashboardError(f"{what}: {exc}", 404) from exc

    data, mime_type = await run_in_threadpool(read)
    return Response(data, media_type=mime_type, headers=CACHE)


@router.get("/media/frames/{inspection_id}")
async def frame_image(request: Request, inspection_id: int,
                      user: SignedIn = Depends(signed_in)) -> Response:
    statement = (select(Frame.blob_key, Frame.mime_type)
                 .join(Inspection, Inspection.frame_id == Frame.frame_id)
                 .where(Inspection.id == inspection_id))
    return await _blob(request, statement, f"the frame image of inspection {inspection_id}")


@router.get("/media/frames/{inspection_id}/{position}")
async def sequence_frame_image(request: Request, inspection_id: int, position: int,
                               user: SignedIn = Depends(signed_in)) -> Response:
    statement = (select(FrameBlob.blob_key, FrameBlob.mime_type)
                 .join(Inspection, Inspection.frame_id == FrameBlob.frame_id)
                 .where(Inspection.id == inspection_id, FrameBlob.position == position))
    return await _blob(request, statement, f"frame {position} of inspection {inspection_id}")


@router.get("/media/crops/{crop_id}")
def crop_image(request: Request, crop_id: int, user: SignedIn = Depends(signed_in)) -> Response:
    with state(request).sessions() as session, session.begin():
        row = session.execute(select(EvidenceCrop.image, EvidenceCrop.mime_type)
                              .where(EvidenceCrop.id == crop_id)).one_or_none()
    if row is None:
        raise DashboardError(f"no evidence crop {crop_id}", 404)
    return Response(row.image, media_type=row.mime_type, headers=CACHE)
