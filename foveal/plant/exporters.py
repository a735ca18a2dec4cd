"""Exporters from foveal's dataset format to the layouts the importers read back: `export_mvtec`
(MVTec AD folders: `<product>/test/<type>/<id>.<ext>`, `good` for `none`, and box-shaped masks
under `<product>/ground_truth/<type>/<id>_mask.png`) and `export_coco` (`images/` plus one
`annotations.json` with pixel boxes and rectangle polygons). Image files are copied byte for
byte. Only single images are exported (a sequence item is skipped and counted); a defect item
needs a box. `import_mvtec` / `import_coco` of an export give back the same types and pixel boxes
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
    items: int = 0
    skipped: list[str] = field(default_factory=list)


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


def _exportable(dataset: Path, report: ExportReport) -> list[tuple[Label, BoxPx | None]]:
    items = []
    for label in read_labels(dataset):
        if label.image is None:
            report.skipped.append(f"{label.id}: a sequence (only single images are exported)")
            continue
        box = pixel_box(label)
        if label.defect_type != NO_DEFECT and box is None:
            report.skipped.append(f"{label.id}: a defect without a box")
            continue
        items.append((label, box))
    return items


def _fresh(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)


def export_mvtec(dataset: Path, out: Path) -> ExportReport:
    report = ExportReport(out)
    items = _exportable(dataset, report)
    _fresh(out)
    for label, box in items:
        assert label.image is not None
        category = safe_id(label.product)
        folder = GOOD if label.defect_type == NO_DEFECT else label.defect_type
        src = dataset / label.image
        target = out / category / "test" / folder / f"{label.id}{src.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        if box is not None and label.defect_type != NO_DEFECT:
            mask = np.zeros((label.height, label.width), np.uint8)
            mask[box[1]:box[3], box[0]:box[2]] = 255
            mask_path = out / category / "ground_truth" / folder / f"{label.id}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(mask_path), mask):
                raise DatasetError(f"could not write {mask_path}")
        report.items += 1
    return report


def export_coco(dataset: Path, out: Path) -> ExportReport:
    report = ExportReport(out)
    items = _exportable(dataset, report)
    _fresh(out)
    names = sorted({label.defect_type for label, _ in items if label.defect_type != NO_DEFECT})
    category_ids = {name: k + 1 for k, name in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    (out / "images").mkdir()
    for number, (label, box) in enumerate(items, 1):
        assert label.image is not None
        src = dataset / label.image
        file_name = f"images/{label.id}{src.suffix.lower()}"
        shutil.copyfile(src, out / file_name)
        images.append({"id": number, "file_name": file_name, "width": label.width, "height": label.height})
        if box is not None and label.defect_type != NO_DEFECT:
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": number,
                "category_id": category_ids[label.defect_type],
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
