"""Reviewed data as a dataset for retraining: every inspection whose latest decisive review gives
it a label, with its full frame (every frame, for a sequence) from the blob store, written in
foveal's dataset format (`foveal/plant/dataset.py`, source `reviews`) and, when asked, converted
to MVTec AD folders or a COCO file (`foveal/plant/exporters.py`). Each export is recorded as a
`dataset_snapshots` row (name, filters, item count, the labels' SHA-256, where it lives) in the
caller's transaction. Images are copied byte for byte.

A sequence becomes a sequence item (`sequences/review-<id>/<k>.<ext>`, one file per frame in
order). A review labels the sequence, not each frame: an ok sequence is written with
`defect_frames: []` (no frame shows a defect); a defect sequence with the reviewed type and,
when the label has a box, `bbox` in the frame the dashboard showed it on (`bbox_frame`: the
frame of the model's last zoom, else the first frame it selected, else frame 1;
`inspection.shown_frame`); which other frames show the defect is not known, so `defect_frames`
and `frame_boxes` are left out. The MVTec and COCO exports make each frame an image of its own
and keep only the frames whose state is known (`foveal/plant/exporters.py`). A sequence
ingested before every frame's blob key was stored (revision 0003) is skipped and counted.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from foveal import blobs
from foveal.dashboard.inspection import crop_frames, shown_frame
from foveal.domain import NO_DEFECT
from foveal.plant.dataset import MANIFEST_FILE, DatasetWriter
from foveal.plant.exporters import EXPORTERS, round_out
from foveal.settings import Settings
from foveal.storage.models import DatasetSnapshot, FrameBlob

FORMATS: tuple[str, ...] = ("foveal", "mvtec", "coco")
REVIEWED = """
WITH latest AS (
    SELECT DISTINCT ON (inspection_id) inspection_id, corrected_verdict, corrected_type,
           corrected_box_x1 AS x1, corrected_box_y1 AS y1, corrected_box_x2 AS x2, corrected_box_y2 AS y2,
           reviewer
    FROM reviews WHERE decision <> 'comment' ORDER BY inspection_id, reviewed_at DESC, id DESC)
SELECT i.id, f.frame_id, f.product, f.line, f.blob_key, f.mime_type, f.sequence_length, l.*
FROM latest l JOIN inspections i ON i.id = l.inspection_id JOIN frames f ON f.frame_id = i.frame_id
WHERE (CAST(:line AS text) IS NULL OR f.line = :line)
  AND (CAST(:product AS text) IS NULL OR f.product = :product)
  AND (CAST(:start AS timestamptz) IS NULL OR i.created_at >= :start)
  AND (CAST(:end AS timestamptz) IS NULL OR i.created_at < :end)
ORDER BY i.id"""


@dataclass(frozen=True)
class ExportFilters:
    line: str | None = None
    product: str | None = None
    since: date | None = None
    until: date | None = None

    def params(self) -> dict[str, Any]:
        end = datetime.combine(self.until + timedelta(days=1), time.min, UTC) if self.until else None
        return {"line": self.line, "product": self.product,
                "start": datetime.combine(self.since, time.min, UTC) if self.since else None, "end": end}

    def as_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in vars(self).items() if v}


@dataclass
class Exported:
    path: Path
    format: str
    items: int
    snapshot_id: int
    skipped: list[str] = field(default_factory=list)


def _write_native(session: Session, settings: Settings, filters: ExportFilters, out: Path,
                  skipped: list[str]) -> int:
    rows = session.execute(text(REVIEWED), filters.params()).all()
    meta = {"format": "foveal", "filters": filters.as_json()}
    with DatasetWriter(out, source="reviews", meta=meta) as writer:
        for row in rows:
            reason = (_add_sequence(writer, settings, session, row) if row.sequence_length > 1
                      else _add_image(writer, settings, row))
            if reason:
                skipped.append(f"inspection {row.id}: {reason}")
        return len(writer.labels)


def _read(settings: Settings, blob_key: str) -> tuple[bytes, tuple[int, int]] | str:
    """The stored image's bytes and (height, width), or why it cannot be exported."""
    try:
        data = blobs.fetch(settings, blob_key)
    except blobs.BlobError as exc:
        return str(exc)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return "the stored frame is not a readable image"
    return data, (int(pixels.shape[0]), int(pixels.shape[1]))


def _add_image(writer: DatasetWriter, settings: Settings, row: Any) -> str | None:
    if row.blob_key is None:
        return "no stored frame image"
    defect = row.corrected_verdict == "defect"
    if defect and row.x1 is None:
        return "a defect without a box (draw one to export it)"
    read = _read(settings, row.blob_key)
    if isinstance(read, str):
        return read
    data, (height, width) = read
    item_id = f"review-{row.id}"
    rel = f"images/{item_id}{blobs.EXTENSIONS.get(row.mime_type, '.png')}"
    writer.stage_path(rel).write_bytes(data)  # byte for byte: plant images are never re-encoded
    fields: dict[str, Any] = dict(id=item_id, image=rel, product=row.product, width=width, height=height,
                                  defect_type=row.corrected_type if defect else NO_DEFECT)
    if defect:  # the pixel box too, as the importers keep it
        box = (row.x1, row.y1, row.x2, row.y2)
        fields.update(bbox=box, bbox_px=round_out(box, width, height))
    writer.add_label(**fields)
    return None


def _add_sequence(writer: DatasetWriter, settings: Settings, session: Session, row: Any) -> str | None:
    length = row.sequence_length
    kept = session.execute(select(FrameBlob.position, FrameBlob.blob_key, FrameBlob.mime_type)
                           .where(FrameBlob.frame_id == row.frame_id).order_by(FrameBlob.position)).all()
    if [k.position for k in kept] != list(range(length)):
        return (f"a sequence of {length} frames with {len(kept)} in the blob store "
                "(ingested before every frame was kept)")
    frames: list[tuple[bytes, str]] = []
    sizes: set[tuple[int, int]] = set()
    for blob in kept:  # every frame read before any is written: a skipped sequence leaves no files
        read = _read(settings, blob.blob_key)
        if isinstance(read, str):
            return f"frame {blob.position + 1}: {read}"
        frames.append((read[0], blob.mime_type))
        sizes.add(read[1])
    if len(sizes) != 1:
        return f"frames of different sizes ({', '.join(f'{w}x{h}' for h, w in sorted(sizes))})"
    ((height, width),) = sizes
    item_id = f"review-{row.id}"
    rels = []
    for k, (data, mime_type) in enumerate(frames):
        rels.append(f"sequences/{item_id}/{k:02d}{blobs.EXTENSIONS.get(mime_type, '.png')}")
        writer.stage_path(rels[-1]).write_bytes(data)
    fields: dict[str, Any] = dict(id=item_id, frames=rels, product=row.product, width=width, height=height)
    if row.corrected_verdict != "defect":
        fields.update(defect_type=NO_DEFECT, defect_frames=[], frame_boxes=[None] * length)
    else:
        fields.update(defect_type=row.corrected_type)
        if row.x1 is not None:
            box = (row.x1, row.y1, row.x2, row.y2)
            fields.update(bbox=box, bbox_px=round_out(box, width, height),
                          bbox_frame=shown_frame(crop_frames(session, row.id), length, range(length)))
    writer.add_label(**fields)
    return None


def export_reviews(session: Session, settings: Settings, fmt: str, out: Path,
                   filters: ExportFilters | None = None, name: str | None = None) -> Exported:
    """Write the reviewed data under `out` in `fmt` and record the snapshot; returns what it wrote."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="foveal-export-") as scratch:
        native = out if fmt == "foveal" else Path(scratch) / "native"
        items = _write_native(session, settings, filters, native, skipped)
        manifest = json.loads((native / MANIFEST_FILE).read_text())
        if fmt != "foveal":
            exporter: Callable[[Path, Path], Any] = EXPORTERS[fmt]
            report = exporter(native, out)
            skipped += report.skipped
            items = report.items
    snapshot = DatasetSnapshot(
        name=name or f"reviews-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{fmt}", source="reviews",
        filters=dict(filters.as_json(), format=fmt), n_items=items,
        content_sha256=manifest["labels_sha256"], manifest_uri=out.resolve().as_uri())
    session.add(snapshot)
    session.flush()
    return Exported(out, fmt, items, snapshot.id, skipped)


def zip_folder(folder: Path, into: Path) -> Path:
    """`folder` as a zip archive beside `into` (returns the archive's path)."""
    return Path(shutil.make_archive(str(into), "zip", root_dir=folder))
