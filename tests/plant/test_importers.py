"""Importers of real plant data: an MVTec-layout folder and a COCO file, both made here with
cv2-written PNGs, go through `foveal.plant.importers` and must come out as the labels, boxes and
masks that were put in; every failure is a clear message and leaves no dataset behind.

Run: `.venv/bin/python -m pytest tests/plant/test_importers.py -q`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from foveal.domain import Taxonomy
from foveal.plant.dataset import DatasetError, Label, read_labels
from foveal.plant.importers import (
    import_coco,
    import_mvtec,
    load_mapping,
    rle_decode,
    rle_from_string,
)

W, H = 64, 48


def write_png(path: Path, image: np.ndarray[Any, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def noise_image(seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def rect_mask(*rects: tuple[int, int, int, int]) -> np.ndarray[Any, Any]:
    """A 0/255 mask of the union of pixel rectangles (x1, y1, x2, y2), ends exclusive."""
    mask = np.zeros((H, W), np.uint8)
    for x1, y1, x2, y2 in rects:
        mask[y1:y2, x1:x2] = 255
    return mask


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if ".partial" in p.name]


def by_id(folder: Path) -> dict[str, Label]:
    return {label.id: label for label in read_labels(folder)}


# --- MVTec AD ---------------------------------------------------------------------------------

# (split, type folder, stem) -> (mask rectangles, expected pixel box); no rectangles = good.
MVTEC_ITEMS: dict[tuple[str, str, str], tuple[list[tuple[int, int, int, int]], tuple[int, ...] | None]] = {
    ("train", "good", "000"): ([], None),
    ("train", "good", "001"): ([], None),
    ("test", "good", "000"): ([], None),
    ("test", "scratch", "000"): ([(10, 5, 30, 9)], (10, 5, 30, 9)),
    ("test", "scratch", "001"): ([(40, 20, 44, 30), (30, 26, 44, 30)], (30, 20, 44, 30)),  # an L
    ("test", "broken_large", "000"): ([(2, 3, 60, 45)], (2, 3, 60, 45)),
}


def make_mvtec_category(folder: Path, seed: int = 0) -> None:
    for k, ((split, kind, stem), (rects, _)) in enumerate(MVTEC_ITEMS.items()):
        write_png(folder / split / kind / f"{stem}.png", noise_image(seed + k))
        if rects:
            write_png(folder / "ground_truth" / kind / f"{stem}_mask.png", rect_mask(*rects))
    (folder / "test" / "good" / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "license.txt").write_text("CC BY-NC-SA 4.0\n")


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    make_mvtec_category(root / "bottle")
    (root / "readme.txt").write_text("MVTec AD\n")
    return root


@pytest.fixture
def mapping_file(tmp_path: Path) -> Path:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"broken_large": "crack"}))
    return path


def test_mvtec_import_gives_the_types_boxes_and_masks_that_were_made(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "bottle"
    report = import_mvtec(mvtec_root, out, load_mapping(mapping_file))

    labels = by_id(out)
    assert report.by_type == {"none": 3, "scratch": 2, "crack": 1}
    assert report.by_split == {"train": 2, "test": 4}
    assert {s.path for s in report.skipped} == {"readme.txt", "bottle/test/good/.DS_Store"}
    expected_types = {"good": "none", "scratch": "scratch", "broken_large": "crack"}
    assert len(labels) == len(MVTEC_ITEMS)
    for (split, kind, stem), (rects, box_px) in MVTEC_ITEMS.items():
        label = labels[f"mvtec-bottle-{split}-{kind}-{stem}"]
        assert (label.product, label.defect_type, label.source) == ("bottle", expected_types[kind], "mvtec")
        assert (label.width, label.height) == (W, H)
        assert label.image is not None
        source = mvtec_root / "bottle" / split / kind / f"{stem}.png"
        assert (out / label.image).read_bytes() == source.read_bytes()
        assert label.bbox_px == box_px
        if box_px is None:
            assert label.bbox is None and label.mask is None
            continue
        assert label.bbox == pytest.approx((box_px[0] / W, box_px[1] / H, box_px[2] / W, box_px[3] / H))
        assert label.mask is not None
        stored = cv2.imread(str(out / label.mask), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(stored, rect_mask(*rects))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["by_split"] == {"test": 4, "train": 2} and manifest["items"] == 6


def test_mvtec_import_twice_gives_identical_labels(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path) -> None:
    mapping = load_mapping(mapping_file)
    import_mvtec(mvtec_root, tmp_path / "first", mapping)
    import_mvtec(mvtec_root / "bottle", tmp_path / "second", mapping)  # the category folder itself
    first, second = (tmp_path / name / "labels.jsonl" for name in ("first", "second"))
    assert first.read_bytes() == second.read_bytes()


def test_mvtec_root_with_several_categories_gives_one_product_each(tmp_path: Path) -> None:
    make_mvtec_category(tmp_path / "src" / "bottle")
    make_mvtec_category(tmp_path / "src" / "metal_nut", seed=50)
    report = import_mvtec(tmp_path / "src", tmp_path / "out", {"broken_large": "dent"})
    products = {label.product for label in read_labels(tmp_path / "out")}
    assert products == {"bottle", "metal_nut"}
    assert report.items == 2 * len(MVTEC_ITEMS) and report.by_type["dent"] == 2
    renamed = import_mvtec(tmp_path / "src", tmp_path / "out2", {"broken_large": "dent"}, product="line7")
    assert {label.product for label in read_labels(tmp_path / "out2")} == {"line7"}
    assert renamed.items == report.items


def test_mvtec_unknown_type_without_mapping_fails_before_writing(mvtec_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "bottle"
    with pytest.raises(DatasetError, match="broken_large") as error:
        import_mvtec(mvtec_root, out)
    message = str(error.value)
    assert "scratch" in message and "none" in message and "mapping" in message
    assert "'scratch'" not in message.split("]")[0]  # only unknown names in the first list
    assert_nothing_written(out)


@pytest.mark.parametrize("suffix, text", [
    (".json", '{"broken_large": "crack"}'),
    (".toml", 'broken_large = "crack"\n'),
])
def test_mvtec_mapping_file_maps_unknown_folders(
        mvtec_root: Path, tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"mapping{suffix}"
    path.write_text(text)
    report = import_mvtec(mvtec_root, tmp_path / "out", load_mapping(path))
    assert report.by_type["crack"] == 1
    assert by_id(tmp_path / "out")["mvtec-bottle-test-broken_large-000"].defect_type == "crack"


def test_mapping_to_a_name_outside_the_taxonomy_needs_the_taxonomy_extended(
        mvtec_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="porosity"):
        import_mvtec(mvtec_root, tmp_path / "out", {"broken_large": "porosity"})
    assert_nothing_written(tmp_path / "out")
    taxonomy = Taxonomy().extend(["porosity"])
    report = import_mvtec(mvtec_root, tmp_path / "out", {"broken_large": "porosity"}, taxonomy=taxonomy)
    assert report.by_type["porosity"] == 1


def test_load_mapping_rejects_malformed_files(tmp_path: Path) -> None:
    bad = {"list.json": "[1, 2]", "number.json": '{"a": 3}', "upper.toml": 'a = "Scratch"',
           "broken.json": "{", "mapping.yaml": "a: scratch"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError, match=name):
            load_mapping(tmp_path / name)


def test_mvtec_folder_inside_a_type_folder_fails_but_hidden_entries_are_skipped(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path) -> None:
    (mvtec_root / "bottle" / "test" / "scratch" / ".ipynb_checkpoints").mkdir()
    (mvtec_root / "bottle" / "test" / "scratch" / "notes.txt").write_text("x")
    report = import_mvtec(mvtec_root, tmp_path / "out", load_mapping(mapping_file))
    assert {s.path for s in report.skipped} >= {"bottle/test/scratch/.ipynb_checkpoints",
                                                "bottle/test/scratch/notes.txt"}
    (mvtec_root / "bottle" / "test" / "scratch" / "more").mkdir()
    with pytest.raises(DatasetError, match=r"unexpected folder .*scratch/more"):
        import_mvtec(mvtec_root, tmp_path / "out2", load_mapping(mapping_file))
    assert_nothing_written(tmp_path / "out2")


def test_mvtec_missing_mask_fails_naming_the_file(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path) -> None:
    (mvtec_root / "bottle" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"missing mask for .*scratch/001\.png.*001_mask\.png"):
        import_mvtec(mvtec_root, out, load_mapping(mapping_file))
    assert_nothing_written(out)


@pytest.mark.parametrize("where", ["train/good/002.png", "test/scratch/000.png"])
def test_mvtec_unreadable_image_fails_naming_the_file_and_leaves_nothing(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path, where: str) -> None:
    (mvtec_root / "bottle" / where).write_bytes(b"this is not a png at all")
    out = tmp_path / "datasets" / "out"
    with pytest.raises(DatasetError, match=rf"cannot decode image .*{where}"):
        import_mvtec(mvtec_root, out, load_mapping(mapping_file))
    assert_nothing_written(out)


def test_mvtec_mask_of_another_size_or_empty_fails(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path) -> None:
    mask = mvtec_root / "bottle" / "ground_truth" / "scratch" / "000_mask.png"
    write_png(mask, np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetError, match=r"000_mask\.png.* is empty"):
        import_mvtec(mvtec_root, tmp_path / "out", load_mapping(mapping_file))
    write_png(mask, np.full((H // 2, W), 255, np.uint8))
    with pytest.raises(DatasetError, match=r"000_mask\.png is 64x24, its image is 64x48"):
        import_mvtec(mvtec_root, tmp_path / "out", load_mapping(mapping_file))
    assert_nothing_written(tmp_path / "out")


# --- COCO -------------------------------------------------------------------------------------

def rle_to_string(counts: list[int]) -> str:
    """pycocotools' `rleToString`, to make compressed RLE for the decoder under test."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return "".join(chars)


def rle_counts(mask: np.ndarray[Any, Any]) -> list[int]:
    """Uncompressed COCO RLE of a mask: column-major runs, starting with zeros."""
    flat = (mask.flatten(order="F") > 0).astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


COCO_BOXES = {  # annotation id -> (image id, category id, bbox x, y, w, h)
    1: (1, 1, (10.0, 5.0, 20.0, 10.0)),  # polygon
    2: (2, 2, (3.5, 4.0, 20.0, 30.0)),  # bbox only
    3: (4, 3, (0.0, 0.0, 10.0, 10.0)),  # same type twice: union box
    4: (4, 3, (40.0, 30.0, 20.0, 15.0)),  # uncompressed RLE
    5: (5, 1, (5.0, 5.0, 4.0, 4.0)),  # smaller, other type: dropped
    6: (5, 3, (20.0, 20.0, 30.0, 20.0)),  # compressed RLE
}


def make_coco(folder: Path) -> Path:
    images = [{"id": k, "file_name": f"img{k}.png", "width": W, "height": H} for k in range(1, 6)]
    for k in range(1, 6):
        write_png(folder / "images" / f"img{k}.png", noise_image(100 + k))
    segmentations: dict[int, Any] = {
        1: [[10, 5, 30, 5, 30, 15, 10, 15]],
        3: [],
        4: {"counts": rle_counts(rect_mask((40, 30, 60, 45))), "size": [H, W]},
        6: {"counts": rle_to_string(rle_counts(rect_mask((20, 20, 50, 40)))), "size": [H, W]},
    }
    annotations = [{"id": a, "image_id": i, "category_id": c, "bbox": list(b), "iscrowd": 0,
                    **({"segmentation": segmentations[a]} if a in segmentations else {})}
                   for a, (i, c, b) in COCO_BOXES.items()]
    categories = [{"id": 1, "name": "scratch"}, {"id": 2, "name": "rust"}, {"id": 3, "name": "dent"},
                  {"id": 9, "name": "unused_and_unknown"}]
    path = folder / "line3.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def normalized(*boxes: tuple[float, float, float, float]) -> tuple[float, ...]:
    x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x2, y2 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return (x1 / W, y1 / H, x2 / W, y2 / H)


def stored_mask(out: Path, label: Label) -> np.ndarray[Any, Any]:
    assert label.mask is not None
    return cv2.imread(str(out / label.mask), cv2.IMREAD_GRAYSCALE) > 0


def test_coco_import_round_trips_boxes_types_and_masks(tmp_path: Path) -> None:
    coco = make_coco(tmp_path / "src")
    out = tmp_path / "out"
    report = import_coco(coco, out, tmp_path / "src" / "images", {"rust": "stain"})

    labels = {label.id: label for label in read_labels(out)}
    assert sorted(labels) == [f"coco-{k}-img{k}" for k in range(1, 6)]
    assert report.by_type == {"scratch": 1, "stain": 1, "none": 1, "dent": 2}
    assert report.by_split == {"all": 5}
    assert [d.reason for d in report.dropped] == ["annotation 5 (scratch): the image is labelled dent"]
    types = {k: labels[f"coco-{k}-img{k}"].defect_type for k in range(1, 6)}
    assert types == {1: "scratch", 2: "stain", 3: "none", 4: "dent", 5: "dent"}
    boxes = {a: b for a, (_, _, b) in COCO_BOXES.items()}
    for k, expected in {1: [1], 2: [2], 4: [3, 4], 5: [6]}.items():
        label = labels[f"coco-{k}-img{k}"]
        assert label.bbox == pytest.approx(normalized(*(boxes[a] for a in expected)))
        assert label.product == "line3" and label.source == "coco"
    assert labels["coco-3-img3"].bbox is None and labels["coco-3-img3"].mask is None
    np.testing.assert_array_equal(stored_mask(out, labels["coco-1-img1"]), rect_mask((10, 5, 30, 15)) > 0)
    np.testing.assert_array_equal(stored_mask(out, labels["coco-2-img2"]), rect_mask((3, 4, 24, 34)) > 0)
    np.testing.assert_array_equal(stored_mask(out, labels["coco-4-img4"]),
                                  rect_mask((0, 0, 10, 10), (40, 30, 60, 45)) > 0)
    np.testing.assert_array_equal(stored_mask(out, labels["coco-5-img5"]), rect_mask((20, 20, 50, 40)) > 0)
    image = labels["coco-1-img1"].image
    assert image is not None
    assert (out / image).read_bytes() == (tmp_path / "src" / "images" / "img1.png").read_bytes()


def test_coco_import_twice_gives_identical_labels(tmp_path: Path) -> None:
    coco = make_coco(tmp_path / "src")
    for name in ("first", "second"):
        import_coco(coco, tmp_path / name, tmp_path / "src" / "images", {"rust": "stain"})
    assert (tmp_path / "first" / "labels.jsonl").read_bytes() == \
        (tmp_path / "second" / "labels.jsonl").read_bytes()


def test_coco_unknown_category_name_fails_before_writing(tmp_path: Path) -> None:
    coco = make_coco(tmp_path / "src")
    with pytest.raises(DatasetError, match=r"unknown COCO categories \['rust'\]"):
        import_coco(coco, tmp_path / "out", tmp_path / "src" / "images")
    assert_nothing_written(tmp_path / "out")


def edit_coco(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(category_id=42), "annotation 1 has unknown category id 42"),
    (lambda d: d["annotations"][1].update(image_id=77), "annotation 2 refers to unknown image id 77"),
    (lambda d: d["images"][2].update(file_name="gone.png"),
     r"image .*gone\.png \(COCO image id 3\) is missing"),
    (lambda d: d["annotations"][1].update(bbox=[50, 4, 20, 30]), r"COCO bbox .* outside the 64x48 image"),
    (lambda d: d["annotations"][4].update(bbox=[5, 5, 0, 4]), "is empty or outside"),
    (lambda d: d["images"][0].update(width=640), "img1.png is 64x48, the COCO file says 640x48"),
    (lambda d: d["annotations"][3]["segmentation"].update(size=[10, 10]), "RLE of annotation 4 is 10x10"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotations.0.bbox"),
])
def test_coco_errors_are_clear_and_leave_nothing(tmp_path: Path, change: Any, message: str) -> None:
    coco = make_coco(tmp_path / "src")
    edit_coco(coco, change)
    out = tmp_path / "datasets" / "out"
    with pytest.raises(DatasetError, match=message):
        import_coco(coco, out, tmp_path / "src" / "images", {"rust": "stain"})
    assert_nothing_written(out)


def test_coco_images_dir_defaults_to_the_annotation_folder(tmp_path: Path) -> None:
    coco = make_coco(tmp_path / "src")
    edit_coco(coco, lambda d: [img.update(file_name=f"images/{img['file_name']}") for img in d["images"]])
    report = import_coco(coco, tmp_path / "out", mapping={"rust": "stain"}, product="pcb", split="val")
    assert report.by_split == {"val": 5}
    assert {label.product for label in read_labels(tmp_path / "out")} == {"pcb"}


def test_rle_decoders_invert_the_pycocotools_encoding() -> None:
    rng = np.random.default_rng(7)
    mask = (rng.random((H, W)) > 0.7).astype(np.uint8)
    counts = rle_counts(mask)
    np.testing.assert_array_equal(rle_decode(counts, H, W), mask)
    assert rle_from_string(rle_to_string(counts)) == counts
    assert rle_from_string(rle_to_string([0, 1_000_000, 3, 5, 999_990])) == [0, 1_000_000, 3, 5, 999_990]
    with pytest.raises(DatasetError, match="expected 48x64"):
        rle_decode(counts[:-1], H, W)


def _foveal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foveal", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})


def test_cli_imports_mvtec_with_a_mapping_and_prints_counts(
        mvtec_root: Path, mapping_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = _foveal("data", "import", str(mvtec_root), "--format", "mvtec", "--out", str(out),
                     "--mapping", str(mapping_file))
    assert result.returncode == 0, result.stderr
    assert "imported 6 items" in result.stdout and "crack" in result.stdout
    assert {label.defect_type for label in by_id(out).values()} == {"none", "scratch", "crack"}


def test_cli_import_of_unknown_type_is_one_clear_error(mvtec_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = _foveal("data", "import", str(mvtec_root), "--format", "mvtec", "--out", str(out))
    assert result.returncode == 2
    assert "broken_large" in result.stderr and "Traceback" not in result.stderr
    assert_nothing_written(out)
