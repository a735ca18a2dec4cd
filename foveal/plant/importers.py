"""Importers of real plant data into foveal's dataset format: `import_mvtec` (MVTec AD folders,
boxes derived from the masks) and `import_coco` (a COCO file: its boxes kept, polygons or RLE
rasterized into masks); the CLI runs them as `foveal data import --format mvtec|coco`. Source
names map onto the taxonomy (a `load_mapping` file wins, then taxonomy names, then `good` →
`none`); unknown names fail, all listed, before anything is written. Image files are copied byte
for byte (decoded once to check them and read their size), so plant images are never
re-compressed; masks are stored as 0/255 PNGs. All writing goes through `DatasetWriter`, so a
failure leaves no dataset behind.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from foveal.domain import NO_DEFECT, Taxonomy, check_defect_name
from foveal.plant.dataset import BoxN, BoxPx, DatasetError, DatasetWriter, MaskArray, box_from_mask

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
GOOD = "good"  # MVTec's name for defect-free images
BBOX_TOLERANCE_PX = 0.5  # COCO boxes that overshoot the image by rounding only are clamped


@dataclass(frozen=True)
class Skip:
    """Something the importer left out, and why."""

    path: str
    reason: str


@dataclass
class ImportReport:
    """What an import wrote: items per defect type and per split, and what it left out."""

    out: Path
    by_type: dict[str, int] = field(default_factory=dict)
    by_split: dict[str, int] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)  # files that are not data (.DS_Store, …)
    dropped: list[Skip] = field(default_factory=list)  # COCO annotations of a second type

    @property
    def items(self) -> int:
        return sum(self.by_type.values())

    def count(self, defect_type: str, split: str) -> None:
        self.by_type[defect_type] = self.by_type.get(defect_type, 0) + 1
        self.by_split[split] = self.by_split.get(split, 0) + 1

    def manifest_meta(self) -> dict[str, Any]:
        return dict(by_split=dict(sorted(self.by_split.items())), skipped=len(self.skipped),
                    dropped_annotations=len(self.dropped))


def load_mapping(path: Path) -> dict[str, str]:
    """A `{source name: defect type}` mapping from a flat JSON object or TOML table."""
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data: Any = json.loads(text)
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            raise DatasetError(f"mapping file {path} must end in .json or .toml")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mapping file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DatasetError(f"mapping file {path} must map names to defect type names (strings)")
    try:
        return {str(k): check_defect_name(v) for k, v in data.items()}
    except ValueError as exc:
        raise DatasetError(f"mapping file {path}: {exc}") from None


def resolve_types(names: Iterable[str], mapping: Mapping[str, str] | None, taxonomy: Taxonomy,
                  what: str) -> dict[str, str]:
    """Map each source name to a defect type, or fail listing every unknown name at once."""
    mapping, wanted = dict(mapping or {}), set(names)
    bad_targets = sorted({v for v in mapping.values() if v not in taxonomy})
    if bad_targets:
        raise DatasetError(f"the mapping targets {bad_targets} are not defect types; "
                           f"allowed: {list(taxonomy.names)}")
    resolved: dict[str, str] = {}
    for name in wanted:
        if name in mapping:
            resolved[name] = mapping[name]
        elif name in taxonomy:
            resolved[name] = name
        elif name == GOOD:
            resolved[name] = NO_DEFECT
    unknown = sorted(wanted - set(resolved))
    if unknown:
        raise DatasetError(
            f"unknown {what} {unknown}: allowed are the defect types {list(taxonomy.names)}, "
            f"'{GOOD}' and the mapping's names {sorted(mapping)}; give a mapping file "
            f"(JSON or TOML) such as {{\"{unknown[0]}\": \"scratch\"}}")
    return resolved


def safe_id(*parts: object) -> str:
    """An item id from parts, with characters the Label id pattern forbids replaced by `_`.

    >>> safe_id("mvtec", "metal nut", "test", 7)
    'mvtec-metal_nut-test-7'
    """
    return "-".join(re.sub(r"[^A-Za-z0-9_.]", "_", str(p)) for p in parts)


# --- shared file handling ---------------------------------------------------------------------

def read_image_file(path: Path, flags: int = cv2.IMREAD_UNCHANGED,
                    what: str = "image") -> tuple[bytes, np.ndarray[Any, Any]]:
    """The bytes of an image file and its decoded pixels, or a DatasetError naming the file."""
    try:
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except cv2.error:
        image = None
    if image is None:
        raise DatasetError(f"cannot decode {what} {path}: not a readable image file")
    return data, np.asarray(image)


def read_mask_file(path: Path, height: int, width: int) -> MaskArray:
    """A (H, W) bool mask from a mask image that must match its image's size."""
    mask = read_image_file(path, cv2.IMREAD_GRAYSCALE, "mask")[1]
    if mask.shape[:2] != (height, width):
        raise DatasetError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, "
                           f"its image is {width}x{height}")
    return mask > 0


def _stage_image(writer: DatasetWriter, item_id: str, src: Path, data: bytes) -> str:
    rel = f"images/{item_id}{src.suffix.lower()}"
    writer.stage_path(rel).write_bytes(data)
    return rel


def _stage_mask(writer: DatasetWriter, item_id: str, mask: MaskArray) -> str:
    rel = f"masks/{item_id}.png"
    if not cv2.imwrite(str(writer.stage_path(rel)), np.where(mask > 0, 255, 0).astype(np.uint8)):
        raise DatasetError(f"could not write {rel}")
    return rel


# --- MVTec AD ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MvtecItem:
    id: str
    image: Path
    category: str
    split: str
    folder: str  # the type folder's own name
    mask: Path


def import_mvtec(src: Path, out: Path, mapping: dict[str, str] | None = None,
                 product: str | None = None, *, taxonomy: Taxonomy | None = None) -> ImportReport:
    """Import an MVTec AD category folder, or a root holding several, into a dataset at `out`.

    Ids are `mvtec-<category>-<train|test>-<type folder>-<stem>`, so the split survives; the
    product is the category name unless `product` is given.
    """
    report = ImportReport(out=out)
    items = [item for cat in _mvtec_categories(src, report) for item in _mvtec_items(cat, report)]
    if not items:
        raise DatasetError(f"{src}: no images under <category>/train/<type>/ or <category>/test/<type>/")
    types = resolve_types((i.folder for i in items), mapping, taxonomy or Taxonomy(), "defect folders")
    for item in items:
        if types[item.folder] != NO_DEFECT and not item.mask.is_file():
            raise DatasetError(f"missing mask for {item.image}: expected {item.mask}")
    with DatasetWriter(out, source="mvtec", meta={"format": "mvtec"}) as writer:
        for item in items:
            defect_type = types[item.folder]
            _add_mvtec_item(writer, item, defect_type, product or item.category)
            report.count(defect_type, item.split)
        writer.meta.update(report.manifest_meta())
    return report


def _mvtec_categories(src: Path, report: ImportReport) -> list[Path]:
    src = src.resolve()
    if not src.is_dir():
        raise DatasetError(f"{src} is not a folder")
    if _is_category(src):
        return [src]
    categories = []
    for entry in sorted(src.iterdir()):
        if _is_category(entry):
            categories.append(entry)
        else:
            report.skipped.append(Skip(entry.name, "not an MVTec category (no train/ or test/ folder)"))
    if not categories:
        raise DatasetError(f"{src} is neither an MVTec category (train/, test/) nor a folder of them")
    return categories


def _is_category(path: Path) -> bool:
    return path.is_dir() and ((path / "train").is_dir() or (path / "test").is_dir())


def _mvtec_items(category: Path, report: ImportReport) -> list[_MvtecItem]:
    items = []
    for split in ("train", "test"):
        split_dir = category / split
        if not split_dir.is_dir():
            continue
        for folder in sorted(split_dir.iterdir()):
            if not folder.is_dir():
                where = str(folder.relative_to(category.parent))
                report.skipped.append(Skip(where, "a file outside any <type>/ folder"))
                continue
            for path in sorted(folder.iterdir()):
                reason = _not_an_image(path)
                if reason:
                    report.skipped.append(Skip(str(path.relative_to(category.parent)), reason))
                    continue
                mask = category / "ground_truth" / folder.name / f"{path.stem}_mask.png"
                item_id = safe_id("mvtec", category.name, split, folder.name, path.stem)
                items.append(_MvtecItem(item_id, path, category.name, split, folder.name, mask))
    return items


def _not_an_image(path: Path) -> str | None:
    if path.name.startswith("."):
        return "a hidden file or folder"
    if path.is_dir():  # might hold images we would silently lose
        raise DatasetError(f"unexpected folder {path}: an MVTec <type>/ folder holds image files only")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (suffix {path.suffix or 'none'!r})"
    return None


def _add_mvtec_item(writer: DatasetWriter, item: _MvtecItem, defect_type: str, product: str) -> None:
    data, pixels = read_image_file(item.image)
    height, width = pixels.shape[:2]
    fields: dict[str, Any] = dict(id=item.id, product=product, defect_type=defect_type,
                                  width=width, height=height,
                                  image=_stage_image(writer, item.id, item.image, data))
    if defect_type != NO_DEFECT:
        mask = read_mask_file(item.mask, height, width)
        boxes = box_from_mask(mask)
        if boxes is None:
            raise DatasetError(f"mask {item.mask} of defect image {item.image} is empty")
        fields.update(bbox_px=boxes[0], bbox=boxes[1], mask=_stage_mask(writer, item.id, mask))
    writer.add_label(**fields)


# --- COCO -------------------------------------------------------------------------------------

class _Coco(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CocoRle(_Coco):
    counts: list[int] | str  # uncompressed runs, or pycocotools' compressed string
    size: tuple[int, int]  # (height, width)


class CocoImage(_Coco):
    id: int | str
    file_name: str
    width: int | None = None
    height: int | None = None


class CocoAnnotation(_Coco):
    id: int | str | None = None
    image_id: int | str
    category_id: int | str
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    segmentation: list[list[float]] | CocoRle | None = None


class CocoCategory(_Coco):
    id: int | str
    name: str


class CocoFile(_Coco):
    images: list[CocoImage]
    annotations: list[CocoAnnotation] = []
    categories: list[CocoCategory] = []


def import_coco(annotations: Path, out: Path, images_dir: Path | None = None,
                mapping: dict[str, str] | None = None, product: str | None = None, *,
                split: str = "all", taxonomy: Taxonomy | None = None) -> ImportReport:
    """Import a COCO file (images relative to `images_dir`, default its folder) into `out`.

    One label per image: its type is that of the largest annotation (by box area, first wins a
    tie); its box is the union of the COCO boxes of that type and its mask the union of their
    segmentations (the box rectangle where an annotation has none). Annotations of other types
    are listed in `report.dropped`; an image without annotations is `none`.
    """
    coco = _load_coco(annotations)
    if not coco.images:
        raise DatasetError(f"{annotations}: the COCO file lists no images")
    report = ImportReport(out=out)
    by_image = _group_annotations(coco, annotations)
    names = {c.id: c.name for c in coco.categories}
    used = {names[a.category_id] for anns in by_image.values() for a in anns}
    types = resolve_types(used, mapping, taxonomy or Taxonomy(), "COCO categories")
    folder = images_dir if images_dir is not None else annotations.parent
    for image in coco.images:
        if not (folder / image.file_name).is_file():
            raise DatasetError(f"image {folder / image.file_name} (COCO image id {image.id}) is missing")
    cat_types = {cid: types[name] for cid, name in names.items() if name in types}
    with DatasetWriter(out, source="coco", meta={"format": "coco", "split": split}) as writer:
        for image in coco.images:
            defect_type = _add_coco_image(writer, image, by_image[image.id], cat_types,
                                          folder, product or annotations.stem, report)
            report.count(defect_type, split)
        writer.meta.update(report.manifest_meta())
    return report


def _load_coco(path: Path) -> CocoFile:
    try:
        return CocoFile.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"cannot read COCO file {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise DatasetError(f"{path}: not a COCO file: {where}: {err['msg']}") from None


def _group_annotations(coco: CocoFile, path: Path) -> dict[int | str, list[CocoAnnotation]]:
    by_image: dict[int | str, list[CocoAnnotation]] = {}
    for image in coco.images:
        if image.id in by_image:
            raise DatasetError(f"{path}: image id {image.id} appears twice")
        by_image[image.id] = []
    categories = {c.id for c in coco.categories}
    for ann in coco.annotations:
        if ann.category_id not in categories:
            raise DatasetError(f"{path}: annotation {ann.id} has unknown category id {ann.category_id}; "
                               f"the file's categories are {sorted(map(str, categories))}")
        if ann.image_id not in by_image:
            raise DatasetError(f"{path}: annotation {ann.id} refers to unknown image id {ann.image_id}")
        by_image[ann.image_id].append(ann)
    return by_image


def _add_coco_image(writer: DatasetWriter, image: CocoImage, anns: list[CocoAnnotation],
                    cat_types: dict[int | str, str], folder: Path, product: str,
                    report: ImportReport) -> str:
    path = folder / image.file_name
    data, pixels = read_image_file(path)
    height, width = pixels.shape[:2]
    if (image.width or width, image.height or height) != (width, height):
        raise DatasetError(f"image {path} is {width}x{height}, the COCO file says "
                           f"{image.width}x{image.height}")
    item_id = safe_id("coco", image.id, Path(image.file_name).stem)
    fields: dict[str, Any] = dict(id=item_id, product=product, width=width, height=height,
                                  image=_stage_image(writer, item_id, path, data))
    for ann in anns:
        _check_box(ann, width, height, path)
    defects = [a for a in anns if cat_types[a.category_id] != NO_DEFECT]
    defect_type = NO_DEFECT
    if defects:
        defect_type = cat_types[max(defects, key=lambda a: a.bbox[2] * a.bbox[3]).category_id]
        chosen = [a for a in defects if cat_types[a.category_id] == defect_type]
        report.dropped.extend(Skip(str(path), f"annotation {a.id} ({cat_types[a.category_id]}): the "
                                   f"image is labelled {defect_type}")
                              for a in defects if cat_types[a.category_id] != defect_type)
        box_px, box = _union_box([a.bbox for a in chosen], width, height, path)
        mask = np.zeros((height, width), np.uint8)
        for ann in chosen:
            mask |= _annotation_mask(ann, width, height, path)
        fields.update(bbox=box, bbox_px=box_px, mask=_stage_mask(writer, item_id, mask))
    writer.add_label(defect_type=defect_type, **fields)
    return defect_type


def _check_box(ann: CocoAnnotation, width: int, height: int, path: Path) -> None:
    x, y, w, h = ann.bbox
    tol = BBOX_TOLERANCE_PX
    if not (w > 0 and h > 0 and x >= -tol and y >= -tol and x + w <= width + tol
            and y + h <= height + tol):
        raise DatasetError(f"COCO bbox {[x, y, w, h]} of annotation {ann.id} ({path}) is empty or "
                           f"outside the {width}x{height} image")


def _union_box(boxes: list[tuple[float, float, float, float]], width: int, height: int,
               path: Path) -> tuple[BoxPx, BoxN]:
    x1 = max(min(b[0] for b in boxes), 0.0)
    y1 = max(min(b[1] for b in boxes), 0.0)
    x2 = min(max(b[0] + b[2] for b in boxes), float(width))
    y2 = min(max(b[1] + b[3] for b in boxes), float(height))
    if not (x1 < x2 and y1 < y2):
        raise DatasetError(f"COCO boxes {boxes} of {path} lie outside the {width}x{height} image")
    px = (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))
    return px, (x1 / width, y1 / height, x2 / width, y2 / height)


def _annotation_mask(ann: CocoAnnotation, width: int, height: int, path: Path) -> np.ndarray[Any, Any]:
    """(H, W) uint8 0/1: the polygons, the RLE, or the box rectangle when there is neither."""
    seg = ann.segmentation
    if isinstance(seg, CocoRle):
        if tuple(seg.size) != (height, width):
            raise DatasetError(f"RLE of annotation {ann.id} is {seg.size[1]}x{seg.size[0]}, "
                               f"image {path} is {width}x{height}")
        counts = rle_from_string(seg.counts) if isinstance(seg.counts, str) else seg.counts
        return rle_decode(counts, height, width)
    mask = np.zeros((height, width), np.uint8)
    if seg:
        if any(len(poly) < 6 or len(poly) % 2 for poly in seg):
            raise DatasetError(f"annotation {ann.id} of {path}: a polygon needs >= 3 x, y pairs")
        mask = _polygon_mask([np.asarray(p, np.float64).reshape(-1, 2) for p in seg], height, width)
    else:
        x, y, w, h = ann.bbox
        mask[max(math.floor(y), 0):math.ceil(y + h), max(math.floor(x), 0):math.ceil(x + w)] = 1
    return mask


def _polygon_mask(polys: list[np.ndarray[Any, Any]], height: int, width: int) -> np.ndarray[Any, Any]:
    """Pixels at least half inside the polygons (continuous COCO coordinates, as pycocotools
    rasterizes them; cv2 alone would add a boundary row), drawn at 4x over their extent only."""
    scale, mask = 4, np.zeros((height, width), np.uint8)
    corners = np.concatenate(polys)  # (N, 2) x, y
    x0, y0 = (max(int(v), 0) for v in np.floor(corners.min(axis=0)))
    x1, y1 = min(math.ceil(corners[:, 0].max()), width), min(math.ceil(corners[:, 1].max()), height)
    if x1 <= x0 or y1 <= y0:
        return mask
    fine = np.zeros(((y1 - y0) * scale, (x1 - x0) * scale), np.uint8)
    cv2.fillPoly(fine, [np.round((p - (x0, y0)) * scale).astype(np.int32) for p in polys], (1,))
    cover = fine.reshape(y1 - y0, scale, x1 - x0, scale).mean(axis=(1, 3))  # (h, w) in [0, 1]
    mask[y0:y1, x0:x1] = cover >= 0.5
    return mask


def rle_decode(counts: list[int], height: int, width: int) -> np.ndarray[Any, Any]:
    """Uncompressed COCO RLE (column-major runs, zeros first) to an (H, W) uint8 0/1 mask.

    >>> rle_decode([1, 2, 3], 3, 2).tolist()
    [[0, 0], [1, 0], [1, 0]]
    """
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise DatasetError(f"RLE counts sum to {sum(counts)}, expected {height}x{width}")
    values = np.arange(len(counts)) % 2
    flat = np.repeat(values.astype(np.uint8), counts)
    return np.ascontiguousarray(flat.reshape((width, height)).T)


def rle_from_string(text: str) -> list[int]:
    """The run counts of pycocotools' compressed RLE string (its `rleFrString`).

    >>> rle_from_string("5X13l1")
    [5, 40, 3, 100]
    """
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise DatasetError(f"compressed RLE {text[:20]!r}… is truncated")
            char = ord(text[pos]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            pos += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
