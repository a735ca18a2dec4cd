"""The dataset format every source of plant data writes and every consumer reads.

A dataset is a folder: `labels.jsonl` (one `Label` per line, sorted by id), the images under
`images/`, masks under `masks/`, sequence frames under `sequences/<id>/`, and `manifest.json`
(who wrote it, counts, the sha256 of `labels.jsonl`). `DatasetWriter` writes into a hidden
staging folder and moves the result into place only when everything succeeded, so a failed
render or import leaves nothing half-written. Paths inside labels are relative to the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from foveal.domain import NO_DEFECT
from foveal.errors import FovealError

LABELS_FILE = "labels.jsonl"
MANIFEST_FILE = "manifest.json"
Difficulty = Literal["easy", "hard", "tiny"]
BoxN = tuple[float, float, float, float]  # normalized x1, y1, x2, y2
BoxPx = tuple[int, int, int, int]  # pixels x1, y1, x2, y2 (x2, y2 exclusive)
ImageArray = npt.NDArray[np.uint8]  # (H, W, 3) RGB or (H, W) gray
MaskArray = npt.NDArray[np.bool_] | npt.NDArray[np.uint8]  # (H, W), nonzero = defect


class DatasetError(FovealError):
    """A dataset could not be written or read; the message names the item and the cause."""


class Label(BaseModel):
    """One item: a single image, or a sequence of frames of one part."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    image: str | None = None
    frames: list[str] | None = None
    product: str
    defect_type: str
    bbox: BoxN | None = None
    bbox_px: BoxPx | None = None
    mask: str | None = None
    difficulty: Difficulty | None = None
    # Sequences: which frames (0-based) show the defect, and the box in each frame (None where hidden).
    defect_frames: list[int] | None = None
    frame_boxes: list[BoxN | None] | None = None
    # Sequences known in part (reviewed plant data): `bbox` is in frame `bbox_frame` (0-based);
    # without `defect_frames`, which other frames show the defect is not known.
    bbox_frame: int | None = Field(None, ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    seed: int | None = None
    source: str = "render"

    @model_validator(mode="after")
    def _consistent(self) -> Label:
        if (self.image is None) == (self.frames is None):
            raise ValueError("exactly one of image or frames must be set")
        defective = self.defect_type != "none"
        if self.image is not None and defective and self.bbox is None:
            raise ValueError("a defective image needs a bbox")
        if not defective and (self.bbox is not None or self.mask is not None):
            raise ValueError("a defect-free item has no bbox and no mask")
        if self.bbox is not None:
            x1, y1, x2, y2 = self.bbox
            if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
                raise ValueError(f"bbox {self.bbox} is not a normalized box")
        if self.frames is not None and self.frame_boxes is not None \
                and len(self.frame_boxes) != len(self.frames):
            raise ValueError("frame_boxes needs one entry per frame")
        if self.frames is not None and (self.bbox is None) != (self.bbox_frame is None):
            raise ValueError("on a sequence, bbox and bbox_frame (the frame it is in) go together")
        if self.bbox_frame is not None and (self.frames is None or self.bbox_frame >= len(self.frames)):
            raise ValueError("bbox_frame must be a frame of the sequence")
        return self

    @property
    def is_sequence(self) -> bool:
        return self.frames is not None


class DatasetWriter:
    """Write a dataset atomically: `with DatasetWriter(out) as w: w.add_image(...)`."""

    def __init__(self, out: Path, *, source: str, meta: dict[str, Any] | None = None,
                 image_ext: str = ".png", jpeg_quality: int = 95) -> None:
        self.out = out
        self.source = source
        self.meta = dict(meta or {})
        self.image_ext = image_ext
        self.jpeg_quality = jpeg_quality
        self.labels: dict[str, Label] = {}
        self._stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> DatasetWriter:
        if self.out.exists() and any(self.out.iterdir()):
            raise DatasetError(f"{self.out} exists and is not empty; choose a new --out")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._stage.mkdir()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self._stage, ignore_errors=True)
            raise

    def add_image(self, image: ImageArray, *, mask: MaskArray | None = None, **fields: Any) -> Label:
        """Store an RGB (H, W, 3) or gray (H, W) uint8 image (and its mask) and its label."""
        item_id = fields["id"]
        height, width = image.shape[:2]
        rel = f"images/{item_id}{self.image_ext}"
        self._write_image(rel, image)
        if mask is not None:
            fields["mask"] = f"masks/{item_id}.png"
            self._write_image(fields["mask"], np.where(mask > 0, 255, 0).astype(np.uint8))
        return self._add(dict(fields, image=rel, width=width, height=height))

    def add_sequence(self, frames: Sequence[ImageArray], **fields: Any) -> Label:
        """Store the frames of one sequence (all the same size) and its label."""
        item_id = fields["id"]
        height, width = frames[0].shape[:2]
        rels = []
        for k, frame in enumerate(frames):
            rel = f"sequences/{item_id}/{k:02d}{self.image_ext}"
            self._write_image(rel, frame)
            rels.append(rel)
        return self._add(dict(fields, frames=rels, width=width, height=height))

    def add_label(self, **fields: Any) -> Label:
        """Record a label whose files the caller already placed with `stage_path()`."""
        return self._add(fields)

    def stage_path(self, rel: str) -> Path:
        path = self._stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _add(self, fields: dict[str, Any]) -> Label:
        fields.setdefault("source", self.source)
        try:
            label = Label(**fields)
        except ValidationError as exc:
            raise DatasetError(f"item {fields.get('id')!r}: {exc.errors()[0]['msg']}") from None
        if label.id in self.labels:
            raise DatasetError(f"item id {label.id!r} is used twice")
        self.labels[label.id] = label
        return label

    def _write_image(self, rel: str, image: ImageArray) -> None:
        path = self.stage_path(rel)
        bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if path.suffix == ".jpg" else []
        if not cv2.imwrite(str(path), bgr, params):
            raise DatasetError(f"could not write {rel}")

    def _finish(self) -> None:
        labels_path = self._stage / LABELS_FILE
        labels_path.write_text("".join(label_line(self.labels[k]) for k in sorted(self.labels)))
        counts: dict[str, int] = {}
        for label in self.labels.values():
            counts[label.defect_type] = counts.get(label.defect_type, 0) + 1
        manifest = dict(self.meta, source=self.source, items=len(self.labels),
                        by_type=dict(sorted(counts.items())), labels_sha256=file_sha256(labels_path))
        (self._stage / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if self.out.exists():
            self.out.rmdir()  # empty, checked on enter
        self._stage.rename(self.out)


def label_line(label: Label) -> str:
    """The canonical JSON line of a label: stable key order, no nulls, so builds diff cleanly."""
    return json.dumps(label.model_dump(mode="json", exclude_none=True), sort_keys=True) + "\n"


def read_labels(folder: Path) -> list[Label]:
    return list(iter_labels(folder))


def iter_labels(folder: Path) -> Iterator[Label]:
    path = folder / LABELS_FILE
    if not path.is_file():
        raise DatasetError(f"{folder} is not a dataset: no {LABELS_FILE}")
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            try:
                yield Label.model_validate_json(line)
            except ValidationError as exc:
                raise DatasetError(f"{path}:{number}: {exc.errors()[0]['msg']}") from None


def load_image(folder: Path, rel: str) -> ImageArray:
    """An RGB uint8 (H, W, 3) image of a dataset (gray images come back with 3 channels)."""
    bgr = cv2.imread(str(folder / rel), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot read image {folder / rel}")
    return cast(ImageArray, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def defect_mask(folder: Path, label: Label, shape: tuple[int, ...]) -> npt.NDArray[np.bool_] | None:
    """Where the defect of a single-image `label` is, (H, W) of the frame's `shape`: its mask file,
    else its box filled (a reviewed defect carries a box drawn on the dashboard, not a mask);
    None for a good part or a defect with neither."""
    if label.mask:
        return load_image(folder, label.mask)[:, :, 0] > 0
    if label.defect_type == NO_DEFECT or (label.bbox_px is None and label.bbox is None):
        return None
    height, width = shape[0], shape[1]
    if label.bbox_px is not None:
        x1, y1, x2, y2 = label.bbox_px
    else:
        assert label.bbox is not None
        x1, y1 = int(label.bbox[0] * width), int(label.bbox[1] * height)
        x2, y2 = math.ceil(label.bbox[2] * width), math.ceil(label.bbox[3] * height)
    mask = np.zeros((height, width), bool)
    mask[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)] = True
    return mask


def merged_folder(out: Path, folders: Sequence[Path]) -> Path:
    """One dataset folder that reads as all of `folders` (for a trainer that takes one): each is
    linked in as `<k>/`, its labels' paths get that prefix and their ids `<k>-`. Made anew on every
    call; no image is copied."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    lines = []
    for k, folder in enumerate(folders):
        (out / str(k)).symlink_to(folder.resolve(), target_is_directory=True)
        for label in iter_labels(folder):
            lines.append(label_line(label.model_copy(update={
                "id": f"{k}-{label.id}",
                "image": label.image and f"{k}/{label.image}", "mask": label.mask and f"{k}/{label.mask}",
                "frames": label.frames and [f"{k}/{f}" for f in label.frames],
            })))
    (out / LABELS_FILE).write_text("".join(lines))
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def box_from_mask(mask: MaskArray) -> tuple[BoxPx, BoxN] | None:
    """Tight pixel box (exclusive end) and its normalized form, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    height, width = mask.shape[:2]
    px = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return px, (px[0] / width, px[1] / height, px[2] / width, px[3] / height)
