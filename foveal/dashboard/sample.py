"""Sample review data for the dashboard's screenshots, tests and paging benchmark.

`write_inspection` stores one frame (or sequence) and its inspection exactly as the ingest worker
does (every image into the blob store; frame, its blob keys, inspection, steps, crops and the
NOTIFY in one transaction, through `foveal.storage.repository`). `scripted` turns a rendered plant
frame into an inspection that follows the model protocol (whole-frame look, zooms cropped from
the original around the true defect, sometimes a wrong zoom first, a boxed answer);
`scripted_sequence` does the same for a rendered sequence (select_frames on frames that show the
defect, in no particular order, then a zoom into one of them): realistic to look at, but
scripted, not a model's output. `bulk_seed` inserts N light inspections (no images, no steps)
with one SQL statement per table, for the 100,000-row paging benchmark.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from foveal.blobs import BlobStore
from foveal.domain import NO_DEFECT, FrameMeta
from foveal.plant.render import RenderedFrame
from foveal.plant.sequence import RenderedSequence
from foveal.storage import repository as repo

CROP_PX = 336


def png(pixels: np.ndarray) -> bytes:  # type: ignore[type-arg]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


def crop(pixels: np.ndarray, box: repo.Box4) -> tuple[bytes, int, int]:  # type: ignore[type-arg]
    """The region of `box` (normalized) from the original, resized to at most CROP_PX a side."""
    height, width = pixels.shape[:2]
    x1, y1 = int(box[0] * width), int(box[1] * height)
    x2, y2 = max(int(box[2] * width), x1 + 1), max(int(box[3] * height), y1 + 1)
    region = pixels[y1:y2, x1:x2]
    scale = CROP_PX / max(region.shape[:2])
    out = cv2.resize(
        region,
        (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale))),
        interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA,
    )
    return png(out), out.shape[1], out.shape[0]


def _padded(box: repo.Box4, pad: float = 0.1) -> repo.Box4:
    return (max(0.0, box[0] - pad), max(0.0, box[1] - pad), min(1.0, box[2] + pad), min(1.0, box[3] + pad))


def _zoom_step(
    index: int,
    pixels: np.ndarray,  # type: ignore[type-arg]
    box: repo.Box4,
    text_before: str,
    rng: random.Random,
    *,
    target_image: int = 1,
    frame_index: int = -1,
) -> repo.NewStep:
    region = _padded(box)
    data, w, h = crop(pixels, region)
    args = {"bbox_2d": [round(v, 3) for v in box], "target_image": target_image}
    return repo.NewStep(
        index=index,
        operation="crop_image_normalized",
        arguments=args,
        text=text_before,
        error=None,
        duration_ms=rng.uniform(8, 30),
        crops=(repo.NewCrop(data, "image/png", w, h, region, frame_index),),
    )


def scripted(
    rendered: RenderedFrame,
    rng: random.Random,
    *,
    model_version: str = "1",
    uncertain: bool = False,
    wrong_type: str | None = None,
) -> repo.NewInspection:
    """An inspection of `rendered` in the model protocol, answering its true type (or `wrong_type`)."""
    truth = rendered.spec.defect_type
    pixels = rendered.image
    steps: list[repo.NewStep] = []
    where = "the surface" if rendered.bbox is None else _area(rendered.bbox)
    if rendered.bbox is not None and rng.random() < 0.35:  # a wrong zoom first, then self-correction
        decoy = _decoy(rendered.bbox, rng)
        steps.append(
            _zoom_step(
                0,
                pixels,
                decoy,
                f"The frame shows a {rendered.spec.product} part. Something "
                f"looks uneven at {_area(decoy)}. Now I will zoom in to look clearer at it.",
                rng,
            )
        )
    answer = wrong_type or truth
    if rendered.bbox is not None:
        steps.append(
            _zoom_step(
                len(steps),
                pixels,
                rendered.bbox,
                (
                    "That region is clean texture; the mark must be elsewhere. "
                    if steps
                    else f"The frame shows a {rendered.spec.product} part. "
                )
                + f"A faint irregularity near {where}. Now I will zoom in to look clearer at it.",
                rng,
            )
        )
    verdict = "uncertain" if uncertain else ("ok" if answer == NO_DEFECT else "defect")
    closing = {NO_DEFECT: "The surface looks uniform; no defect."}.get(
        answer, f"In the crop the mark reads as a {answer}: its shape and contrast match."
    )
    steps.append(_answer_step(len(steps), closing, answer, rng))
    confidence = rng.uniform(0.35, 0.6) if uncertain else rng.uniform(0.62, 0.995)
    ops = len(steps) - 1
    model_ms = rng.uniform(180, 420) + 90 * ops
    return _inspection(verdict, answer, confidence, rendered.bbox if answer != NO_DEFECT else None,
                       model_version, model_ms, steps)


def _inspection(verdict: str, answer: str, confidence: float, box: repo.Box4 | None, model_version: str,
                model_ms: float, steps: list[repo.NewStep]) -> repo.NewInspection:
    """A scripted inspection's record: 15 ms of service time on top of the model's, 12 ms per operation."""
    ops = len(steps) - 1
    return repo.NewInspection(
        verdict=verdict, defect_type=answer, confidence=confidence, box=box, model_name="foveal_vl",
        model_version=model_version, operations=ops, latency_ms=model_ms + 15,
        timings={"total_ms": model_ms + 15, "model_ms": model_ms, "operations_ms": 12.0 * ops,
                 "queue_ms": 3.0},
        steps=tuple(steps),
    )


def _answer_step(index: int, closing: str, answer: str, rng: random.Random) -> repo.NewStep:
    """The last step of a scripted inspection: the closing sentence and `\\boxed{answer}`."""
    return repo.NewStep(index=index, operation="answer", arguments={}, text=f"{closing} \\boxed{{{answer}}}",
                        error=None, duration_ms=rng.uniform(20, 60))


def scripted_sequence(
    rendered: RenderedSequence, rng: random.Random, *, model_version: str = "1"
) -> repo.NewInspection:
    """An inspection of a rendered sequence in the model protocol: select 2-3 frames in a shuffled
    order (ones that show the defect; any, for a clean part), zoom into the first of them when it
    shows the defect, answer the true type."""
    truth, frames = rendered.spec.defect_type, rendered.frames
    shown = list(rendered.defect_frames) or list(range(len(frames)))
    chosen = rng.sample(shown, min(len(shown), rng.randint(2, 3)))  # selection order, not sorted
    numbers = ", ".join(str(k + 1) for k in chosen)
    whole = (0.0, 0.0, 1.0, 1.0)
    views = []
    for k in chosen:
        data, w, h = crop(frames[k], whole)
        views.append(repo.NewCrop(data, "image/png", w, h, whole, k))
    steps = [
        repo.NewStep(
            index=0,
            operation="select_frames",
            arguments={"target_frames": [k + 1 for k in chosen]},
            text=f"A sequence of {len(frames)} frames of a {rendered.spec.product} part. Frames {numbers} "
            "deserve a closer look. Now I will select them.",
            error=None,
            duration_ms=rng.uniform(8, 30),
            crops=tuple(views),
        )
    ]
    box = rendered.boxes[chosen[0]]
    if box is not None:
        steps.append(
            _zoom_step(
                1,
                frames[chosen[0]],
                box,
                f"In frame {chosen[0] + 1} a faint mark near {_area(box)}. Now I will zoom in to look "
                "clearer at it.",
                rng,
                target_image=2,
                frame_index=chosen[0],
            )
        )
    closing = {NO_DEFECT: "None of the frames shows a defect."}.get(
        truth, f"In the crop the mark reads as a {truth}."
    )
    steps.append(_answer_step(len(steps), closing, truth, rng))
    ops = len(steps) - 1
    model_ms = rng.uniform(400, 900) + 120 * ops
    confidence = rng.uniform(0.62, 0.99)
    return _inspection("ok" if truth == NO_DEFECT else "defect", truth, confidence,
                       box if truth != NO_DEFECT else None, model_version, model_ms, steps)


def _area(box: repo.Box4) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = "upper" if cy < 0.33 else "lower" if cy > 0.66 else "middle"
    col = "left" if cx < 0.33 else "right" if cx > 0.66 else "centre"
    return f"the {row} {col}"


def _decoy(box: repo.Box4, rng: random.Random) -> repo.Box4:
    w, h = box[2] - box[0], box[3] - box[1]
    x = (box[0] + 0.5) % (1 - w) if w < 1 else 0.0
    y = rng.uniform(0, max(0.0, 1 - h))
    return (x, y, x + w, y + h)


@dataclass(frozen=True)
class Where:
    line: str
    station: str
    camera: str = "top"


def write_inspection(
    sessions: sessionmaker[Session],
    store: BlobStore,
    image_png: bytes | Sequence[bytes],
    width: int,
    height: int,
    product: str,
    where: Where,
    inspection: repo.NewInspection,
    captured_at: datetime | None = None,
) -> uuid.UUID:
    """The ingest worker's write path for one frame (`image_png`), or for a sequence (a list of
    its frames' PNGs, all `width` x `height`); returns its frame id."""
    frame_id = uuid.uuid4()
    images = [image_png] if isinstance(image_png, bytes) else list(image_png)
    kept = tuple(
        repo.NewBlob(store.put(data, "image/png").uri, "image/png", width, height) for data in images
    )
    meta = FrameMeta(
        frame_id=frame_id,
        line=where.line,
        station=where.station,
        camera=where.camera,
        part_serial=f"P-{frame_id.hex[:8].upper()}",
        product=product,
        captured_at=captured_at or datetime.now(UTC),
    )
    frame = repo.NewFrame(
        meta=meta,
        mime_type="image/png",
        width=width,
        height=height,
        blob_key=kept[0].blob_key,
        sequence_length=len(kept),
        source=None,
        blobs=kept,
    )
    with sessions() as session, session.begin():
        repo.insert_frame(session, frame)
        if repo.insert_inspection(session, frame_id, inspection) is not None:
            repo.notify_inspection(session, frame_id)
    return frame_id


BULK_SQL = (
    """INSERT INTO frames (frame_id, line, station, camera, part_serial, product, captured_at, mime_type,
                           width, height)
       SELECT md5('f' || g)::uuid, 'line-' || (g % 4 + 1), 'station-' || (g % 12 + 1), 'top',
              'P-' || g, (ARRAY['brushed_metal', 'cast_part', 'pcb', 'textile', 'painted_panel'])[g % 5 + 1],
              CAST(:t0 AS timestamptz) + g * interval '3 seconds', 'image/png', 1024, 1024
       FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g""",
    """INSERT INTO inspections (frame_id, verdict, defect_type, confidence, model_name, model_version,
                                operations, latency_ms, created_at)
       SELECT md5('f' || g)::uuid, v.verdict,
              CASE v.verdict WHEN 'ok' THEN 'none'
                   ELSE (ARRAY['scratch', 'crack', 'pit', 'stain', 'burn', 'dent'])[g % 6 + 1] END,
              ((g * 7919) % 1000) / 1000.0, 'foveal_vl', (ARRAY['1', '2'])[g % 2 + 1], g % 3,
              200 + (g * 31) % 400,
              CAST(:t0 AS timestamptz) + g * interval '3 seconds' + interval '400 milliseconds'
       FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g,
            LATERAL (SELECT CASE WHEN g % 10 = 0 THEN 'uncertain' WHEN g % 10 < 4 THEN 'defect'
                                 ELSE 'ok' END AS verdict) AS v""",
)


def bulk_seed(session: Session, count: int, start: datetime, first: int = 1) -> None:
    """`count` frames + inspections: 10 % uncertain, 30 % defect, 60 % ok, 4 lines, 12 stations."""
    params = {"t0": start, "first": first, "last": first + count - 1}
    for statement in BULK_SQL:
        session.execute(text(statement), params)


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)
