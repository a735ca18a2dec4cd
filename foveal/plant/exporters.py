"""Exporters from foveal's dataset format to the layouts the importers read back: `export_mvtec`
(MVTec AD folders: `<product>/test/<type>/<id>.<ext>`, `good` for `none`, and box-shaped masks
under `<product>/ground_truth/<type>/<id>_mask.png`) and `export_coco` (`images/` plus one
`annotations.json` with pixel boxes and rectangle polygons). Image files are copied byte for
byte. A defect image needs a box.

Neither layout knows sequences, so each frame of a sequence is an image of its own, id
`<sequence id>-f<k>` (k 0-based, two digits), labelled by what the item says about that frame: a
defect with its box where `frame_boxes` (or `bbox` with `bbox_frame`) gives one, `good` / no
annotation where the frame is known to show no defect (a defect-free sequence, or a frame outside
`defect_frames`). A frame whose state is not known (a reviewed defect sequence says where the
defect is in one frame, not whether the others show it) or that shows the defect without a box
is skipped and counted. In COCO each frame's image carries `attributes` with `sequence_id`,
`frame_index` and `sequence_length`, so the sequence can be put back together.
`import_mvtec` / `import_coco` of an export give back the same types and pixel boxes
(tests/dashboard/test_export.py checks the round trip).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from foveal.domain import NO_DEFECT
from foveal.plant.dataset import BoxN, BoxPx, DatasetError, Label, read_labels
from foveal.plant.importers import GOOD, safe_id


@dataclass
class ExportReport:
    out: Path
    items: int = 0  # images written (each frame of a sequence counts)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Image:
    """One image to export: a single-image item, or one frame of a sequence."""

    id: str
    path: str  # relative to the dataset folder
    product: str
    defect_type: str  # NO_DEFECT for a frame known to show no defect
    box: BoxPx | None
    width: int
    height: int
    sequence: tuple[str, int, int] | None = None  # (sequence id, frame index, length)


def pixel_box(label: Label) -> BoxPx | None:
    """The label's box in pixels (its `bbox_px`, else the normalized box rounded outwards)."""
    if label.bbox_px is not None:
        return label.bbox_px
    return None if label.bbox is None else round_out(label.bbox, label.width, label.height)


def round_out(box: BoxN, width: int, height: int) -> BoxPx:
    """A normalized box as the pixels it touches (x2, y2 exclusive), never empty.

    >>> round_out((0.1, 0.2, 0.35, 0.5), 100, 10)
    (10, 2, 35, 5)
    """
    x1, y1, x2, y2 = box
    left, top = max(math.floor(x1 * width), 0), max(math.floor(y1 * height), 0)
    right = min(max(math.ceil(x2 * width - 1e-9), left + 1), width)
    bottom = min(max(math.ceil(y2 * height - 1e-9), top + 1), height)
    return (left, top, right, bottom)


def frame_state(label: Label, k: int) -> tuple[str, BoxN | None] | None:
    """What sequence `label` says about frame `k`: (defect type, box) for a defect, (none, None)
    for a frame that shows none, None when it does not say.

    >>> seq = Label(id="s", frames=["a", "b", "c"], product="pcb", defect_type="pit", width=8,
    ...             height=8, bbox=(0.0, 0.0, 0.5, 0.5), bbox_frame=1)
    >>> [frame_state(seq, k) for k in range(3)]
    [None, ('pit', (0.0, 0.0, 0.5, 0.5)), None]
    """
    if label.defect_type == NO_DEFECT:
        return NO_DEFECT, None
    box = label.frame_boxes[k] if label.frame_boxes is not None else None
    if box is None and label.bbox_frame == k:
        box = label.bbox
    if box is not None:
        return label.defect_type, box
    if label.defect_frames is not None:
        return (label.defect_type, None) if k in label.defect_frames else (NO_DEFECT, None)
    if label.frame_boxes is not None:
        return NO_DEFECT, None  # a frame's None in frame_boxes: the defect is hidden there
    return None


def _sequence_images(label: Label, report: ExportReport) -> list[_Image]:
    assert label.frames is not None
    images = []
    for k, rel in enumerate(label.frames):
        state = frame_state(label, k)
        item_id = f"{label.id}-f{k:02d}"
        if state is None:
            report.skipped.append(f"{item_id}: frame {k + 1} of a defect sequence, not known to show "
                                  "the defect or not")
            continue
        kind, box = state
        if kind != NO_DEFECT and box is None:
            report.skipped.append(f"{item_id}: a defect frame without a box")
            continue
        images.append(_Image(item_id, rel, label.product, kind,
                             None if box is None else round_out(box, label.width, label.height),
                             label.width, label.height, (label.id, k, len(label.frames))))
    return images


def _exportable(dataset: Path, report: ExportReport) -> list[_Image]:
    items = []
    for label in read_labels(dataset):
        if label.image is None:
            items += _sequence_images(label, report)
            continue
        box = pixel_box(label)
        if label.defect_type != NO_DEFECT and box is None:
            report.skipped.append(f"{label.id}: a defect without a box")
            continue
        items.append(_Image(label.id, label.image, label.product, label.defect_type, box, label.width,
                            label.height))
    return items


def _fresh(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)


def export_mvtec(dataset: Path, out: Path) -> ExportReport:
    report = ExportReport(out)
    items = _exportable(dataset, report)
    _fresh(out)
    for image in items:
        box = image.box
        category = safe_id(image.product)
        folder = GOOD if image.defect_type == NO_DEFECT else image.defect_type
        src = dataset / image.path
        target = out / category / "test" / folder / f"{image.id}{src.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        if box is not None and image.defect_type != NO_DEFECT:
            mask = np.zeros((image.height, image.width), np.uint8)
            mask[box[1]:box[3], box[0]:box[2]] = 255
            mask_path = out / category / "ground_truth" / folder / f"{image.id}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(mask_path), mask):
                raise DatasetError(f"could not write {mask_path}")
        report.items += 1
    return report


def export_coco(dataset: Path, out: Path) -> ExportReport:
    report = ExportReport(out)
    items = _exportable(dataset, report)
    _fresh(out)
    names = sorted({image.defect_type for image in items if image.defect_type != NO_DEFECT})
    category_ids = {name: k + 1 for k, name in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    (out / "images").mkdir()
    for number, image in enumerate(items, 1):
        box = image.box
        src = dataset / image.path
        file_name = f"images/{image.id}{src.suffix.lower()}"
        shutil.copyfile(src, out / file_name)
        entry: dict[str, Any] = {"id": number, "file_name": file_name, "width": image.width,
                                 "height": image.height}
        if image.sequence is not None:
            sequence_id, frame_index, length = image.sequence
            entry["attributes"] = {"sequence_id": sequence_id, "frame_index": frame_index,
                                   "sequence_length": length}
        images.append(entry)
        if box is not None and image.defect_type != NO_DEFECT:
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": number,
                "category_id": category_ids[image.defect_type],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            })
        report.items += 1
    coco = {"info": {"description": f"foveal export of {dataset.name}"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "defect"} for n, i in category_ids.items()]}
    (out / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n")
    return report


EXPORTERS: dict[str, Callable[[Path, Path], ExportReport]] = {"mvtec": export_mvtec, "coco": export_coco}
