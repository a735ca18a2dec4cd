"""The visual operations the model performs, parsed and executed in this one place.

The model asks for an operation with `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(Pixel Reasoner's protocol; DESIGN.md, "Model protocol"): `crop_image_normalized`
zooms into a box of an image it has seen, `select_frames` shows chosen frames of a sequence.
Images and frames are numbered from 1 in the order they entered the conversation. Crops are cut
from the full-resolution original (also when the target is an earlier crop) and resized to the
model's pixel budget; a malformed call never raises, it becomes an `Execution error: ...` result
the model reads. Plain numpy and OpenCV, no I/O. Tests: `pytest tests/test_operations.py`.

Image 1 of a single-image inspection is the whole frame. Image 1 of a sequence is an overview:
all frames tiled in reading order (left to right, top to bottom), each tile labelled with its
frame number 1..N; it cannot be cropped, the model selects frames first and crops those.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from foveal.domain import Box

RGBImage = npt.NDArray[np.uint8]  # (H, W, 3)
ViewKind = Literal["frame", "overview", "crop", "selected"]

CROP = "crop_image_normalized"
SELECT_FRAMES = "select_frames"
ERROR_PREFIX = "Execution error: "
PAD = 0.1  # normalized, in the target image's units, on each side
MIN_SIDE_PX = 28  # a crop side of this many original pixels or fewer is rejected
MAX_IMAGES = 16  # per inspection, the first image included
MAX_FRAMES = 16
MAX_SELECTED_FRAMES = 8
MAX_ASPECT = 200  # smart_resize refuses more extreme aspect ratios
_EPS_PX = 1e-6  # float noise tolerated when rounding a box outwards to whole pixels
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_NAMES = f"{CROP} or {SELECT_FRAMES}"


@dataclass(frozen=True)
class ImageBudget:
    """How many pixels one image may use in the model's context (Qwen2.5-VL: 28 px per token side)."""

    max_pixels: int = 448 * 448
    min_pixels: int = 4 * 28 * 28
    factor: int = 28

    def __post_init__(self) -> None:
        if not 0 < self.factor * self.factor <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"budget {self} must satisfy 0 < factor**2 <= min_pixels <= max_pixels")


@dataclass(frozen=True, eq=False)
class View:
    """An image the model has seen. `region` is (left, top, right, bottom) in whole pixels of the
    original frame `frame_index` (0-based), right/bottom exclusive; the overview's region is the
    whole (shared) frame size."""

    pixels: RGBImage  # (h, w, 3), h and w multiples of the budget's factor
    region: tuple[int, int, int, int]
    frame_index: int
    kind: ViewKind


@dataclass(frozen=True)
class ToolCall:
    """A well-formed `<tool_call>` envelope; its arguments are checked when executed."""

    name: str
    arguments: dict[str, object]


@dataclass(frozen=True, eq=False)
class OperationResult:
    """What an operation did: `message` is the environment's text, followed by `views`' images."""

    ok: bool
    message: str
    views: tuple[View, ...] = ()
    operation: str | None = None
    arguments: dict[str, object] | None = None
    error: str | None = None
    box: Box | None = None  # a successful crop's region, normalized to its original frame


def _failure(error: str, operation: str | None = None,
             arguments: dict[str, object] | None = None) -> OperationResult:
    return OperationResult(False, ERROR_PREFIX + error, (), operation, arguments, error)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Qwen2-VL's size rule, the same as transformers' `qwen2_vl...smart_resize` (5.24).

    That module cannot be imported without torchvision or Pillow, so the rule is restated here;
    a test checks it against the installed transformers' source. Both sides become multiples of
    `factor`, the area lands in [min_pixels, max_pixels], the aspect ratio is kept.

    >>> smart_resize(1500, 2000, max_pixels=448 * 448)
    (364, 504)
    """
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT}, got "
                         f"{max(height, width) / min(height, width)}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def budget_size(height: int, width: int, budget: ImageBudget = ImageBudget()) -> tuple[int, int]:
    """(h, w) an image of `height` x `width` is shown at: scaled to fill the budget, up or down
    (upscaling a small crop is the zoom), then snapped by `smart_resize`; never over the budget.

    >>> budget_size(1500, 2000), budget_size(60, 80)
    ((392, 504), (392, 504))
    """
    scale = math.sqrt(budget.max_pixels / (height * width))
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    out_h, out_w = smart_resize(scaled_h, scaled_w, budget.factor, budget.min_pixels, budget.max_pixels)
    if out_h * out_w > budget.max_pixels:  # smart_resize raised a thin side to `factor`: trim the long one
        long_px = budget.max_pixels // (budget.factor * min(out_h, out_w)) * budget.factor
        out_h, out_w = (out_h, long_px) if out_h < out_w else (long_px, out_w)
    return out_h, out_w


_T = TypeVar("_T")
_R = TypeVar("_R")
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (the process it was made in, the pool)
_POOL_LOCK = threading.Lock()


def each_image(work: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`work` on each of `items`, in order, spread over the cores when there are several.

    For resizing whole frames: OpenCV's area resize runs on one core and releases the GIL, so a
    sequence's 8-16 frames resize in about half the time on two threads (8 frames of 1024 x 768:
    17 ms in turn, 9 ms on two threads, the same pixels). The pool is made per process, so a
    forked child gets its own."""
    global _POOL
    if len(items) < 2 or (os.cpu_count() or 1) < 2:
        return [work(item) for item in items]
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = os.getpid(), ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                    thread_name_prefix="foveal-images")
        pool = _POOL[1]
    return list(pool.map(work, items))


def resize_to_budget(pixels: RGBImage, budget: ImageBudget) -> RGBImage:
    """`pixels` (H, W, 3) resized to `budget_size`: area averaging down, bicubic up."""
    height, width = pixels.shape[:2]
    out_h, out_w = budget_size(height, width, budget)
    shrinking = out_h * out_w < height * width
    resized = cv2.resize(pixels, (out_w, out_h),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return np.asarray(resized, dtype=np.uint8).reshape(out_h, out_w, 3)


LOOK_SIDE = 0.12  # a look at one token's cell: its crop (padded by PAD) spans 0.32 of the image


def look_box(rows: int, cols: int, row: int, col: int,
             side: float = LOOK_SIDE) -> tuple[float, float, float, float]:
    """The zoom box of `side` (normalized) centred on cell (`row`, `col`) of an image shown as
    `rows` x `cols` tokens, on the 0.02 grid and inside the image: the box a model that points
    at one of its image tokens writes (the compact tower gives every token these numbers).

    >>> look_box(8, 8, 0, 0), look_box(8, 8, 3, 4), look_box(6, 10, 5, 9)
    ((0.0, 0.0, 0.12, 0.12), (0.5, 0.36, 0.62, 0.48), (0.88, 0.84, 1.0, 0.96))
    """
    return look_at((col + 0.5) / cols, (row + 0.5) / rows, side)


def look_at(x: float, y: float, side: float = LOOK_SIDE) -> tuple[float, float, float, float]:
    """The zoom box of `side` (normalized) centred on the point (`x`, `y`) of an image, on the
    0.02 grid and inside the image.

    >>> look_at(0.56, 0.42), look_at(0.99, 0.01)
    ((0.5, 0.36, 0.62, 0.48), (0.88, 0.0, 1.0, 0.12))
    """
    def start(centre: float) -> float:
        snapped = math.floor((centre - side / 2) / 0.02 + 1e-6) * 0.02
        return round(min(max(snapped, 0.0), 1.0 - side), 2)

    x1, y1 = start(x), start(y)
    return (x1, y1, round(x1 + side, 2), round(y1 + side, 2))


def pad_and_clamp(box: Sequence[float], pad: float = PAD) -> tuple[float, float, float, float]:
    """`box` (x1, y1, x2, y2), normalized, grown by `pad` on each side and clamped to [0, 1].

    >>> pad_and_clamp((0.05, 0.5, 0.3, 0.95))
    (0.0, 0.4, 0.4, 1.0)
    """
    x1, y1, x2, y2 = box
    return (max(0.0, x1 - pad), max(0.0, y1 - pad), min(1.0, x2 + pad), min(1.0, y2 + pad))


def to_original(box: Sequence[float], region: Sequence[float]) -> tuple[float, float, float, float]:
    """A box normalized to a target image mapped into original pixels through the target's
    `region` (left, top, right, bottom).

    >>> to_original((0.5, 0.0, 1.0, 0.25), (100, 200, 300, 600))
    (200.0, 200.0, 300.0, 300.0)
    """
    left, top, right, bottom = region
    width, height = right - left, bottom - top
    x1, y1, x2, y2 = box
    return (left + x1 * width, top + y1 * height, left + x2 * width, top + y2 * height)


def pixel_region(region: Sequence[float]) -> tuple[int, int, int, int]:
    """`region` in original pixels rounded outwards to whole pixels (float noise tolerated).

    >>> pixel_region((10.2, 20.0, 39.99999999999, 50.5))
    (10, 20, 40, 51)
    """
    x1, y1, x2, y2 = region
    return (math.floor(x1 + _EPS_PX), math.floor(y1 + _EPS_PX),
            math.ceil(x2 - _EPS_PX), math.ceil(y2 - _EPS_PX))


def overview(frames: Sequence[RGBImage], budget: ImageBudget) -> RGBImage:
    """All `frames` (same size) tiled in reading order into one image within `budget`, each tile
    labelled with its 1-based frame number in its top-left corner."""
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    height, width = frames[0].shape[:2]
    out_h, out_w = budget_size(rows * height, cols * width, budget)
    sheet = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    tiles = [(row * out_h // rows, (row + 1) * out_h // rows, col * out_w // cols, (col + 1) * out_w // cols)
             for row, col in (divmod(i, cols) for i in range(len(frames)))]

    def tile(i: int) -> None:
        top, bottom, left, right = tiles[i]
        sheet[top:bottom, left:right] = cv2.resize(frames[i], (right - left, bottom - top),
                                                   interpolation=cv2.INTER_AREA)
    each_image(tile, range(len(frames)))
    for i, (top, _, left, _) in enumerate(tiles):
        label = str(i + 1)
        (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        cv2.rectangle(sheet, (left, top), (left + text_w + 4, top + text_h + 6), (0, 0, 0), -1)
        cv2.putText(sheet, label, (left + 2, top + text_h + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return sheet


@dataclass
class Workspace:
    """The images of one inspection: the full-resolution `frames` (one image, or a sequence of
    2..16 frames of one size) and the `views` shown so far, image k being `views[k - 1]`.
    `execute` appends to `views`. Bad frames raise ValueError (a caller's bug, not the model's)."""

    frames: Sequence[RGBImage]  # each (H, W, 3) uint8 RGB, full resolution
    budget: ImageBudget = field(default_factory=ImageBudget)
    max_images: int = MAX_IMAGES
    views: list[View] = field(init=False)

    def __post_init__(self) -> None:
        self.frames = tuple(self.frames)
        if not 1 <= len(self.frames) <= MAX_FRAMES:
            raise ValueError(f"an inspection needs 1 to {MAX_FRAMES} frames, got {len(self.frames)}")
        for i, frame in enumerate(self.frames):
            _check_frame(i, frame)
        if len({frame.shape for frame in self.frames}) != 1:
            raise ValueError("the frames of a sequence must all have the same size")
        height, width = self.frames[0].shape[:2]
        whole = (0, 0, width, height)
        if self.is_sequence:
            first = View(overview(self.frames, self.budget), whole, 0, "overview")
        else:
            first = View(resize_to_budget(self.frames[0], self.budget), whole, 0, "frame")
        self.views = [first]

    @property
    def is_sequence(self) -> bool:
        return len(self.frames) > 1


def _check_frame(index: int, frame: object) -> None:
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
            and frame.shape[2] == 3):
        raise ValueError(f"frame {index} must be an RGB uint8 array of shape (H, W, 3)")
    height, width = frame.shape[:2]
    if min(height, width) <= MIN_SIDE_PX or max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"frame {index} is {width}x{height}; sides must exceed {MIN_SIDE_PX} px "
                         f"with an aspect ratio of at most {MAX_ASPECT}")


def _show(value: object, limit: int = 60) -> str:
    """`value` as the model wrote it (JSON), shortened so a huge value cannot flood the context."""
    try:
        text = json.dumps(value, default=repr)
    except (ValueError, TypeError, RecursionError):  # only a caller-built ToolCall gets here
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_tool_call(text: str) -> ToolCall | OperationResult | None:
    """The first tool call of a model turn: None when the turn has none (a final answer), a
    `ToolCall`, or an error result. A missing `</tool_call>` (a stop string the generator cut
    off) is tolerated; later tool calls in the same turn are ignored."""
    start = text.find(_OPEN)
    if start < 0:
        return None
    end = text.find(_CLOSE, start)
    body = text[start + len(_OPEN): end if end >= 0 else len(text)].strip()
    usage = ('write <tool_call>{"name": "crop_image_normalized", "arguments": '
             '{"bbox_2d": [x1, y1, x2, y2], "target_image": 1}}</tool_call>')
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return _failure(f"the tool call is not valid JSON ({_show(str(exc))}); {usage}.")
    if not isinstance(call, dict):
        return _failure(f"the tool call must be a JSON object, got {_show(call)}; {usage}.")
    name, arguments = call.get("name"), call.get("arguments")
    if not isinstance(name, str):
        return _failure(f'the tool call needs "name", a string naming one of {_NAMES}; {usage}.')
    if not isinstance(arguments, dict):
        return _failure(f'the tool call needs "arguments", a JSON object, got {_show(arguments)}; '
                        f"{usage}.", name)
    return ToolCall(name, arguments)


def parse_answer(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` of `text` (nested braces allowed), stripped.

    >>> parse_answer(r"maybe \\boxed{pit}, no: \\boxed{ scratch }")
    'scratch'
    >>> parse_answer("no answer") is None
    True
    """
    marker = "\\boxed{"
    start = text.rfind(marker)
    while start >= 0:
        depth, pos = 1, start + len(marker)
        while pos < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            pos += 1
        if depth == 0:
            return text[start + len(marker): pos - 1].strip()
        start = text.rfind(marker, 0, start)
    return None


def _check_arguments(op: str, arguments: dict[str, object], usage: str) -> str | None:
    missing = [key for key in _OPERATIONS[op].parameters if key not in arguments]
    unknown = [key for key in arguments if key not in _OPERATIONS[op].parameters]
    wrong = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unknown {_show(', '.join(unknown))}"] if unknown else [])
    if wrong:
        return f"{op} got arguments with {' and '.join(wrong)}; it takes {usage}."
    return None


def _check_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_bbox(value: object) -> tuple[float, float, float, float] | str:
    allowed = "bbox_2d must be [x1, y1, x2, y2]: 4 numbers in [0, 1] with x1 < x2 and y1 < y2"
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        return f"{allowed}, got {_show(value)}."
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        return f"{allowed} (normalized to the target image, not pixels), got {_show(value)}."
    if not (x1 < x2 and y1 < y2):
        return f"{allowed}, got {_show(value)}: the box is empty or its corners are swapped."
    return (x1, y1, x2, y2)


def _crop_target(arguments: dict[str, object], ws: Workspace
                 ) -> tuple[tuple[float, float, float, float], View] | str:
    """The checked box and target view of a crop call, or what is wrong with it."""
    count = len(ws.views)
    usage = (f"bbox_2d ([x1, y1, x2, y2] normalized to [0, 1]) and target_image "
             f"(an image number from 1 to {count})")
    problem = _check_arguments(CROP, arguments, usage)
    if problem is not None:
        return problem
    box, target = _check_bbox(arguments["bbox_2d"]), arguments["target_image"]
    if isinstance(box, str):
        return box
    if not (isinstance(target, int) and _check_int(target, 1, count)):
        return f"target_image must be an image number from 1 to {count}, got {_show(target)}."
    if ws.views[target - 1].kind == "overview":
        return (f"image {target} is the overview of all {len(ws.frames)} frames and cannot be "
                "cropped; select frames with select_frames first, then crop one of those images.")
    if count >= ws.max_images:
        return (f"this inspection already shows {count} images, the limit of {ws.max_images}; "
                "answer with \\boxed{...} now.")
    return box, ws.views[target - 1]


def _crop_view(box: Sequence[float], view: View, ws: Workspace, budget: ImageBudget | None = None
               ) -> View | str:
    """The crop of `box` (normalized to `view`, padded) from the full-resolution frame behind
    `view`, resized to the budget; or why the box is too small."""
    return crop_of(box, ws.frames[view.frame_index], view.region, view.frame_index, budget or ws.budget)


def crop_of(box: Sequence[float], frame: RGBImage, region: Sequence[int], frame_index: int,
            budget: ImageBudget) -> View | str:
    """The crop of `box` (normalized to an image showing `region` of `frame`, padded) from
    `frame` at full resolution, resized to `budget`; or why the box is too small. A crop needs
    only the frame and the region of the image it is drawn on, so the model's server can make
    the grounded pointer's probes itself (`foveal.reasoning.engine`)."""
    left, top, right, bottom = pixel_region(to_original(pad_and_clamp(box), region))
    width, height = right - left, bottom - top
    if min(width, height) <= MIN_SIDE_PX or max(width, height) / min(width, height) > MAX_ASPECT:
        return (f"with its padding the box covers {width}x{height} pixels of the original; "
                f"each side must exceed {MIN_SIDE_PX} pixels (aspect ratio at most "
                f"{MAX_ASPECT}). Choose a larger box.")
    return View(resize_to_budget(frame[top:bottom, left:right], budget),
                (left, top, right, bottom), frame_index, "crop")


def preview(box: Sequence[float], target: int, ws: Workspace, budget: ImageBudget | None = None
            ) -> View | None:
    """What a crop of `box` on image `target` (1-based) would show, without showing it (nothing
    is appended to `ws.views`), resized to `budget` (default the workspace's); None when that
    crop would fail. The grounded pointer's candidate looks are scored on these
    (`foveal.reasoning.pointer`)."""
    if not 1 <= target <= len(ws.views) or ws.views[target - 1].kind == "overview":
        return None
    crop = _crop_view(box, ws.views[target - 1], ws, budget)
    return None if isinstance(crop, str) else crop


def _crop(arguments: dict[str, object], ws: Workspace) -> OperationResult:
    checked = _crop_target(arguments, ws)
    if isinstance(checked, str):
        return _failure(checked, CROP, arguments)
    box, view = checked
    crop = _crop_view(box, view, ws)
    if isinstance(crop, str):
        return _failure(crop, CROP, arguments)
    left, top, right, bottom = crop.region
    frame = ws.frames[view.frame_index]
    ws.views.append(crop)
    frame_h, frame_w = frame.shape[:2]
    out_h, out_w = crop.pixels.shape[:2]
    return OperationResult(True, f"Here is the cropped image (Image Size: {out_w}x{out_h}):", (crop,),
                           CROP, arguments, None,
                           Box(left / frame_w, top / frame_h, right / frame_w, bottom / frame_h))


def _chosen_frames(arguments: dict[str, object], ws: Workspace) -> list[int] | str:
    """The checked 1-based frame numbers of a select_frames call, or what is wrong with it."""
    count, frame_count = len(ws.views), len(ws.frames)
    allowed = (f"1 to {MAX_SELECTED_FRAMES} distinct frame numbers from 1 to {frame_count}, "
               "as a list")
    problem = _check_arguments(SELECT_FRAMES, arguments, f"target_frames ({allowed})")
    if problem is not None:
        return problem
    if not ws.is_sequence:
        return ("select_frames needs a sequence of frames, but this inspection has a single image; "
                "use crop_image_normalized instead.")
    chosen = arguments["target_frames"]
    if not (isinstance(chosen, list) and 1 <= len(chosen) <= MAX_SELECTED_FRAMES
            and all(_check_int(f, 1, frame_count) for f in chosen) and len(set(chosen)) == len(chosen)):
        return f"target_frames must be {allowed}, got {_show(chosen)}."
    if count + len(chosen) > ws.max_images:
        return (f"{len(chosen)} more images would exceed the limit of {ws.max_images} images "
                f"({count} shown); select at most {max(0, ws.max_images - count)}.")
    return [int(f) for f in chosen]


def _select_frames(arguments: dict[str, object], ws: Workspace) -> OperationResult:
    numbers = _chosen_frames(arguments, ws)
    if isinstance(numbers, str):
        return _failure(numbers, SELECT_FRAMES, arguments)
    height, width = ws.frames[0].shape[:2]
    shown = each_image(lambda n: resize_to_budget(ws.frames[n - 1], ws.budget), numbers)
    views = tuple(View(pixels, (0, 0, width, height), n - 1, "selected")
                  for n, pixels in zip(numbers, shown, strict=True))
    ws.views.extend(views)
    which = f"frame{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
    return OperationResult(True, f"Here are the selected frames ({which}):", views, SELECT_FRAMES,
                           arguments)


@dataclass(frozen=True)
class _Operation:
    run: Callable[[dict[str, object], Workspace], OperationResult]
    parameters: tuple[str, ...]


_OPERATIONS: Mapping[str, _Operation] = {
    CROP: _Operation(_crop, ("bbox_2d", "target_image")),
    SELECT_FRAMES: _Operation(_select_frames, ("target_frames",)),
}


def execute(call: str | ToolCall, workspace: Workspace) -> OperationResult:
    """Run the model's operation on `workspace` (appending the new views on success). `call` is
    a model turn or an already parsed call. Never raises for anything the model wrote."""
    parsed = parse_tool_call(call) if isinstance(call, str) else call
    if parsed is None:
        return _failure(f"no <tool_call> found; call {_NAMES} inside <tool_call>...</tool_call>.")
    if isinstance(parsed, OperationResult):
        return parsed
    operation = _OPERATIONS.get(parsed.name)
    if operation is None:
        return _failure(f"unknown operation {_show(parsed.name)}; use {_NAMES}.", parsed.name,
                        parsed.arguments)
    return operation.run(parsed.arguments, workspace)
