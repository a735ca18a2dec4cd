"""Render a plant-data set: `generate(out, n=200, seed=0)` writes frames (and sequences) with
their labels through `DatasetWriter`, in parallel over processes, with a progress bar.

The plan is a pure function of the seed: defective items go round-robin through a seeded
shuffle of products × defect types × difficulties, defect-free ones through the products,
and each item's own seed comes from `SeedSequence(seed, spawn_key=(kind, index))`, so the
result does not depend on the number of workers or the order in which they finish. Workers
render and encode; the parent only writes bytes. `preview=True` adds `preview.png`, a contact
sheet of the first items with their defect boxes and a caption, for a person to judge realism.
Item ids are `f000123` for frames and `s000007` for sequences.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.plant.dataset import BoxN, DatasetError, DatasetWriter, Difficulty
from foveal.plant.imaging import U8Image, u8
from foveal.plant.render import DIFFICULTIES, FrameSpec, render_frame
from foveal.plant.sequence import SequenceSpec, render_sequence
from foveal.plant.surfaces import PRODUCTS, RENDERERS

log = logging.getLogger(__name__)
GRAYSCALE_SHARE = 0.2  # share of items from a monochrome camera
THUMB_PX = (256, 192)  # preview tile, width × height
PREVIEW_ITEMS = 24


@dataclass(frozen=True)
class Task:
    """One item to render: its id and the spec of a frame or a sequence."""

    id: str
    spec: FrameSpec | SequenceSpec
    image_ext: str
    jpeg_quality: int
    thumbnail: bool  # also return a preview tile


@dataclass
class Result:
    """What a worker sends back: encoded files by relative path, and the label's fields."""

    task: Task
    files: dict[str, bytes]
    fields: dict[str, Any]
    frames: int
    thumb: U8Image | None = None


@dataclass(frozen=True)
class GenerateReport:
    out: Path
    items: int
    frames: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf


def item_seed(seed: int, kind: int, index: int) -> int:
    """The seed of item `index` (kind 0: frame, 1: sequence), independent of everything else."""
    return int(np.random.SeedSequence(seed, spawn_key=(kind, index)).generate_state(1)[0])


def plan(
    n: int,
    seed: int,
    products: Sequence[str],
    defect_share: float,
    sequences: int = 0,
    size: int | None = None,
    image_ext: str = ".png",
    jpeg_quality: int = 95,
) -> list[Task]:
    """The tasks of a data set, in id order; see the module docstring."""
    tasks = []
    for kind, count, prefix in ((0, n, "f"), (1, sequences, "s")):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind, 1 << 30)))
        for index, (product, defect_type, difficulty) in enumerate(
            _balanced(rng, count, products, defect_share)
        ):
            s = item_seed(seed, kind, index)
            gray = bool(np.random.default_rng(s).random() < GRAYSCALE_SHARE)
            spec: FrameSpec | SequenceSpec
            if kind == 0:
                spec = FrameSpec(product, defect_type, difficulty, size=size, grayscale=gray, seed=s)
            else:
                spec = SequenceSpec(
                    product, defect_type, difficulty, size=size or 1024, grayscale=gray, seed=s
                )
            tasks.append(Task(f"{prefix}{index:06d}", spec, image_ext, jpeg_quality, index < PREVIEW_ITEMS))
    return tasks


def _balanced(
    rng: np.random.Generator, count: int, products: Sequence[str], defect_share: float
) -> list[tuple[str, str, Difficulty]]:
    """Round-robin over seeded shuffles: every combination as often as every other, ±1."""
    defective = round(count * defect_share)
    combos = [(p, t, d) for p in products for t in DEFECT_TYPES if t != NO_DEFECT for d in DIFFICULTIES]
    order = rng.permutation(len(combos))
    goods = rng.permutation(len(products))
    items = [combos[order[i % len(combos)]] for i in range(defective)]
    items += [(products[goods[i % len(products)]], NO_DEFECT, "easy") for i in range(count - defective)]
    return [items[k] for k in rng.permutation(len(items))]


def render_task(task: Task) -> Result:
    """Render and encode one item (runs in a worker process)."""
    if isinstance(task.spec, FrameSpec):
        frame = render_frame(task.spec)
        files = {f"images/{task.id}{task.image_ext}": _encode(frame.image, task, gray=task.spec.grayscale)}
        fields: dict[str, Any] = dict(
            product=task.spec.product,
            defect_type=task.spec.defect_type,
            seed=task.spec.seed,
            width=frame.image.shape[1],
            height=frame.image.shape[0],
            image=f"images/{task.id}{task.image_ext}",
        )
        if frame.bbox is not None:
            files[f"masks/{task.id}.png"] = _encode(
                np.where(frame.mask, 255, 0).astype(np.uint8), task, png=True
            )
            fields.update(
                mask=f"masks/{task.id}.png",
                bbox=frame.bbox,
                bbox_px=frame.bbox_px,
                difficulty=task.spec.difficulty,
            )
        thumb = _thumbnail(frame.image, frame.bbox, _caption(task)) if task.thumbnail else None
        return Result(task, files, fields, 1, thumb)
    seq = render_sequence(task.spec)
    names = [f"sequences/{task.id}/{k:02d}{task.image_ext}" for k in range(len(seq.frames))]
    files = {
        name: _encode(f, task, gray=task.spec.grayscale) for name, f in zip(names, seq.frames, strict=True)
    }
    fields = dict(
        product=task.spec.product,
        defect_type=task.spec.defect_type,
        seed=task.spec.seed,
        width=seq.frames[0].shape[1],
        height=seq.frames[0].shape[0],
        frames=names,
        defect_frames=seq.defect_frames,
        frame_boxes=seq.boxes,
    )
    if task.spec.defect_type != NO_DEFECT:
        fields["difficulty"] = task.spec.difficulty
    shown = seq.defect_frames[0] if seq.defect_frames else 0
    thumb = (
        _thumbnail(
            seq.frames[shown], seq.boxes[shown], _caption(task, f"{seq.kind} {shown + 1}/{len(seq.frames)}")
        )
        if task.thumbnail
        else None
    )
    return Result(task, files, fields, len(seq.frames), thumb)


def _encode(image: U8Image, task: Task, gray: bool = False, png: bool = False) -> bytes:
    ext = ".png" if png else task.image_ext
    pixels = image[..., 0] if gray and image.ndim == 3 else image
    if pixels.ndim == 3:
        pixels = u8(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    params = [cv2.IMWRITE_JPEG_QUALITY, task.jpeg_quality] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, pixels, params)
    if not ok:
        raise DatasetError(f"could not encode {task.id} as {ext}")
    return data.tobytes()


def _caption(task: Task, extra: str = "") -> str:
    spec = task.spec
    level = "" if spec.defect_type == NO_DEFECT else f" {spec.difficulty}"
    return f"{task.id} {spec.product} {spec.defect_type}{level} {extra}".strip()


def _thumbnail(image: U8Image, box: BoxN | None, caption: str) -> U8Image:
    """A preview tile: the frame letterboxed into THUMB_PX, its box drawn, a caption below."""
    tw, th = THUMB_PX
    h, w = image.shape[:2]
    scale = min(tw / w, (th - 16) / h)
    small = cv2.resize(image, (max(int(w * scale), 1), max(int(h * scale), 1)), interpolation=cv2.INTER_AREA)
    tile = np.full((th, tw, 3), 24, np.uint8)
    oy, ox = (th - 16 - small.shape[0]) // 2, (tw - small.shape[1]) // 2
    tile[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
    if box is not None:  # at least 8 px across, so a tiny defect's box can be seen
        x1, y1, x2, y2 = (
            ox + box[0] * small.shape[1],
            oy + box[1] * small.shape[0],
            ox + box[2] * small.shape[1],
            oy + box[3] * small.shape[0],
        )
        cx, cy, half_w, half_h = (
            (x1 + x2) / 2,
            (y1 + y2) / 2,
            max((x2 - x1) / 2 + 2, 4),
            max((y2 - y1) / 2 + 2, 4),
        )
        cv2.rectangle(
            tile,
            (int(cx - half_w), int(cy - half_h)),
            (int(cx + half_w), int(cy + half_h)),
            (255, 40, 40),
            1,
            cv2.LINE_AA,
        )
    cv2.putText(
        tile, caption[:44], (3, th - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.34, (235, 235, 235), 1, cv2.LINE_AA
    )
    return tile


def contact_sheet(tiles: Sequence[U8Image], columns: int = 6) -> U8Image:
    """Tiles in a grid, row by row, with a 2 px gutter."""
    if not tiles:
        return np.zeros((THUMB_PX[1], THUMB_PX[0], 3), np.uint8)
    rows = math.ceil(len(tiles) / columns)
    th, tw = tiles[0].shape[:2]
    sheet = np.zeros((rows * (th + 2), columns * (tw + 2), 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * (th + 2) : r * (th + 2) + th, c * (tw + 2) : c * (tw + 2) + tw] = tile
    return sheet


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only contend


def _run(tasks: Sequence[Task], workers: int) -> Iterator[Result]:
    """Results in completion order, from this process (workers=1) or a pool of processes."""
    if workers <= 1:
        yield from map(render_task, tasks)
        return
    # spawn: workers start clean instead of inheriting OpenCV's thread pool through fork
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    ) as pool:
        futures = [pool.submit(render_task, t) for t in tasks]
        for future in as_completed(futures):
            yield future.result()


@dataclass
class _Sink:
    """Writes results as they arrive and keeps the preview tiles in id order."""

    writer: DatasetWriter
    tiles: dict[str, U8Image] = field(default_factory=dict)
    frames: int = 0

    def take(self, result: Result) -> None:
        for rel, data in result.files.items():
            self.writer.stage_path(rel).write_bytes(data)
        self.writer.add_label(id=result.task.id, **result.fields)
        self.frames += result.frames
        if result.thumb is not None:
            self.tiles[result.task.id] = result.thumb


def generate(
    out: Path,
    n: int,
    seed: int,
    products: Iterable[str] = tuple(PRODUCTS),
    defect_share: float = 0.7,
    sequences: int = 0,
    workers: int | None = None,
    image_ext: str = ".png",
    preview: bool = False,
    size: int | None = None,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> GenerateReport:
    """Render `n` frames and `sequences` sequences into a new dataset folder `out`; `size`
    fixes the long side (default: drawn per frame, 1024–2048); `on_result` sees each item."""
    names = _check(list(products), defect_share, image_ext)
    tasks = plan(n, seed, names, defect_share, sequences, size, image_ext)
    workers = max(1, workers if workers is not None else os.cpu_count() or 1)
    meta = dict(
        generator="foveal.plant.generate",
        seed=seed,
        n=n,
        sequences=sequences,
        products=names,
        defect_share=defect_share,
        size=size,
    )
    started = time.perf_counter()
    columns = (
        TextColumn("rendering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with (
        DatasetWriter(out, source="render", meta=meta, image_ext=image_ext) as writer,
        Progress(*columns, disable=not progress) as bar,
    ):
        sink = _Sink(writer)
        job = bar.add_task("render", total=len(tasks), rate="")
        for result in _run(tasks, workers):
            sink.take(result)
            if on_result is not None:
                on_result(result)
            rate = sink.frames / max(time.perf_counter() - started, 1e-9)
            bar.update(job, advance=1, rate=f"{rate:.2f} frames/s")
        if preview:
            sheet = contact_sheet([sink.tiles[k] for k in sorted(sink.tiles)])
            cv2.imwrite(str(writer.stage_path("preview.png")), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        report = GenerateReport(out, len(tasks), sink.frames, time.perf_counter() - started)
        summary = (
            f"{report.items} items, {report.frames} frames in {report.seconds:.1f} s: "
            f"{report.frames_per_s:.2f} frames/s with {workers} workers"
        )
        if progress:
            bar.console.print(summary)
    log.info("%s into %s", summary, out)
    return report


def _check(products: list[str], defect_share: float, image_ext: str) -> list[str]:
    unknown = [p for p in products if p not in RENDERERS]
    if unknown or not products:
        raise DatasetError(f"unknown products {unknown}; known: {', '.join(RENDERERS)}")
    if not 0.0 <= defect_share <= 1.0:
        raise DatasetError(f"defect_share {defect_share} must be within [0, 1]")
    if image_ext not in (".png", ".jpg"):
        raise DatasetError(f"image_ext must be .png or .jpg, not {image_ext}")
    return products
