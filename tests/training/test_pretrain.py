"""Stage-0 pieces: cell targets follow the mask through the operations' views, jittered zooms
keep the defect, augmentation moves targets with pixels, and a few steps change the backbone."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from foveal.domain import DEFECT_TYPES
from foveal.model.loader import VLM
from foveal.operations import Workspace, execute
from foveal.training import trajectories
from foveal.training.pretrain import (
    VisionSample,
    _augment,
    auroc,
    cell_targets,
    jittered_box,
    pretrain,
    wide_box,
)
from foveal.training.trajectories import tool_call


def test_cell_targets_mark_the_cells_over_the_mask_in_whole_and_zoomed_views() -> None:
    frame = np.zeros((1120, 1120, 3), dtype=np.uint8)
    mask = np.zeros((1120, 1120), dtype=bool)
    mask[500:510, 700:720] = True  # x 700-720, y 500-510
    ws = Workspace([frame])
    whole = cell_targets(mask, ws.views[0], 3)
    assert whole.shape == (16, 16)
    assert set(zip(*np.nonzero(whole), strict=True)) == {(7, 10)}  # 1120 px / 16 = 70 px per cell
    result = execute(tool_call("crop_image_normalized", {"bbox_2d": [0.6, 0.4, 0.7, 0.5], "target_image": 1}),
                     ws)
    zoom = cell_targets(mask, result.views[0], 3)
    assert zoom.max() == 3 and (zoom > 0).sum() > 1  # magnified: the mark spans several cells
    assert cell_targets(None, ws.views[0], 0).sum() == 0


def test_a_reviewed_defect_with_a_box_and_no_mask_is_a_defect_in_stage_0(tmp_path: Path) -> None:
    """Reviews exported from the dashboard carry a drawn box, not a mask: its box stands in, so
    stage 0 on reviews does not learn that their defects are `none`."""
    import cv2

    from foveal.plant.dataset import Label, defect_mask
    from foveal.training.pretrain import samples_for

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "r.png"), np.zeros((560, 840, 3), np.uint8))
    reviewed = Label(id="r", image="images/r.png", product="wood", defect_type="dent", width=840,
                     height=560, bbox=(0.5, 0.5, 0.55, 0.6), bbox_px=(420, 280, 462, 336), source="reviews")
    mask = defect_mask(tmp_path, reviewed, (560, 840))
    assert mask is not None and mask.sum() == 42 * 56 and mask[280:336, 420:462].all()
    good = reviewed.model_copy(update={"defect_type": "none", "bbox": None, "bbox_px": None})
    assert defect_mask(tmp_path, good, (560, 840)) is None
    samples = samples_for(reviewed, tmp_path, random.Random(0), zooms=2, others=0)
    assert [s.kind for s in samples] == ["whole", "zoom", "zoom"]
    assert all((s.target == DEFECT_TYPES.index("dent")).any() for s in samples)


def test_jittered_zooms_always_hold_the_defect_box() -> None:
    rng = random.Random(0)
    for _ in range(500):
        x1, y1 = rng.uniform(0, 0.95), rng.uniform(0, 0.95)
        box = (x1, y1, min(1.0, x1 + rng.uniform(0.001, 0.05)), min(1.0, y1 + rng.uniform(0.001, 0.05)))
        left, top, right, bottom = jittered_box(box, rng)
        assert left <= box[0] + 1e-3 and top <= box[1] + 1e-3
        assert right >= box[2] - 1e-3 and bottom >= box[3] - 1e-3
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1


def test_augmentation_moves_targets_with_the_pixels() -> None:
    rng = random.Random(3)
    view = np.zeros((84, 84, 3), dtype=np.uint8)
    view[0:28, 56:84] = 200  # cell (0, 2)
    target = np.zeros((3, 3), dtype=np.int64)
    target[0, 2] = 4
    for _ in range(20):
        v, t = _augment(view, target, rng)
        (r, c), = zip(*np.nonzero(t), strict=True)
        assert v[r * 28 + 14, c * 28 + 14].mean() > 100


def test_auroc_handles_ties_and_single_classes() -> None:
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert auroc(np.array([0.1, 0.9]), np.array([True, True])) is None


def test_a_few_stage0_steps_change_the_backbone_only(micro_vlm: VLM) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for k in range(4):
        target = np.zeros((12, 12), dtype=np.int64)
        target[k, k] = 1 + k
        samples.append(VisionSample(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8), target, "whole"))
    tower = micro_vlm.model.model.visual
    before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    report = pretrain(micro_vlm, samples, samples[:2], steps=3, batch_size=2)
    after = dict(tower.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("stem"))
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("merger"))
    assert len(report.losses) == 3 and report.cell_auroc is not None


def test_wide_crops_hold_the_defect_box() -> None:
    rng = random.Random(1)
    for _ in range(300):
        x1, y1 = rng.uniform(0, 0.95), rng.uniform(0, 0.95)
        box = (x1, y1, min(1.0, x1 + rng.uniform(0.001, 0.05)), min(1.0, y1 + rng.uniform(0.001, 0.05)))
        left, top, right, bottom = wide_box(box, rng)
        assert left <= box[0] + 1e-3 and top <= box[1] + 1e-3
        assert right >= box[2] - 1e-3 and bottom >= box[3] - 1e-3
        assert right - left >= 0.39 and bottom - top >= 0.39


def _noise_frames(folder: Path, sub: str, count: int, seed: int) -> list[str]:
    """`count` 400 x 300 noise frames written under `folder/sub`; their relative paths."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / sub).mkdir()
    paths = []
    for n in range(count):
        cv2.imwrite(str(folder / sub / f"c{n}.png"), rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
        paths.append(f"{sub}/c{n}.png")
    return paths


def test_look_hints_sit_on_the_cell_heads_peak_and_follow_the_threshold(micro_vlm: VLM,
                                                                        tmp_path: Path) -> None:
    import cv2

    from foveal.plant.dataset import Label
    from foveal.training.pretrain import PEAK_SIDE, _pixels, cell_peaks
    from foveal.training.sft import look_hints

    labels = [Label(id=f"c{n}", image=path, product="brushed_metal", defect_type="none", width=400,
                    height=300) for n, path in enumerate(_noise_frames(tmp_path, "images", 6, seed=0))]
    defect = Label(id="d", image="images/c0.png", product="brushed_metal", defect_type="pit", width=400,
                   height=300, bbox=(0.1, 0.1, 0.2, 0.2), difficulty="easy")
    tower = micro_vlm.model.model.visual
    peaks = cell_peaks(tower, labels, tmp_path, micro_vlm.budget)
    peak_cells: dict[str, tuple[int, int, int, int]] = {}
    for label in labels:
        (x1, y1, x2, y2), score = peaks[label.id]
        assert 0 <= x1 and x2 <= 1 and 0 <= y1 and y2 <= 1
        assert abs(x2 - x1 - PEAK_SIDE) < 1e-9 and abs(y2 - y1 - PEAK_SIDE) < 1e-9
        view = Workspace([cv2.cvtColor(cv2.imread(str(tmp_path / label.image)), cv2.COLOR_BGR2RGB)],
                         micro_vlm.budget).views[0].pixels
        with torch.no_grad():
            cells = 1 - torch.softmax(tower.head(tower.backbone(_pixels(tower, [view]))), 1)[0, 0]
        row, col = np.unravel_index(int(cells.argmax()), tuple(cells.shape))
        peak_cells[label.id] = (cells.shape[0], cells.shape[1], int(row), int(col))
        assert abs(score - float(cells.max())) < 1e-6
        centre_x, centre_y = (col + 0.5) / cells.shape[1], (row + 0.5) / cells.shape[0]
        assert x1 - 1e-9 <= centre_x <= x2 + 1e-9 and y1 - 1e-9 <= centre_y <= y2 + 1e-9
    hints, threshold = look_hints(micro_vlm, [*labels, defect], tmp_path, lambda *_: None, "hints", 0.5)
    assert set(hints) == {lb.id for lb in labels}  # defect-free single images only
    assert sum(h.look for h in hints.values()) == 3  # the upper half of the scores
    assert all(h.look == (peaks[key][1] >= threshold) for key, h in hints.items())
    again, same = look_hints(micro_vlm, labels, tmp_path, lambda *_: None, "hints", 0.9, threshold)
    assert same == threshold and again == hints  # a given threshold (the dev set's) is kept
    from foveal.operations import look_box
    looks = cell_peaks(tower, labels, tmp_path, micro_vlm.budget, cell_looks=True)
    for key, (rows, cols, row, col) in peak_cells.items():  # with cell looks: the peak cell's look box
        assert looks[key] == (look_box(rows, cols, row, col), peaks[key][1])


def test_a_clean_sequences_hint_is_the_frame_that_peaks_highest_and_the_look_at_its_peak(
        micro_vlm: VLM, tmp_path: Path) -> None:
    from foveal.plant.dataset import Label
    from foveal.training.pretrain import cell_peaks, frame_peaks
    from foveal.training.sft import look_hints

    frames = _noise_frames(tmp_path, "sequences", 4, seed=1)
    run = Label(id="s", frames=frames, product="cast_part", defect_type="none", width=400, height=300)
    as_images = [Label(id=f"f{k}", image=f, product="cast_part", defect_type="none", width=400, height=300)
                 for k, f in enumerate(frames)]
    tower = micro_vlm.model.model.visual
    each = cell_peaks(tower, as_images, tmp_path, micro_vlm.budget, cell_looks=True)
    best = max(range(4), key=lambda k: each[f"f{k}"][1])
    assert frame_peaks(tower, [run, *as_images], tmp_path, micro_vlm.budget, cell_looks=True) == {
        "s": (best, *each[f"f{best}"])}  # single images have no frames to rank
    hints, _ = look_hints(micro_vlm, [run], tmp_path, lambda *_: None, "hints", 0.2, cell_looks=True)
    assert hints == {}  # sequences only when asked (a look-first mix)
    hints, _ = look_hints(micro_vlm, [run], tmp_path, lambda *_: None, "hints", 0.2, cell_looks=True,
                          sequences=True)
    assert hints == {"s": trajectories.Hint(each[f"f{best}"][0], True, best)}
