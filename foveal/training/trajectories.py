"""Expert trajectories synthesized from labels, for warm-start supervised fine-tuning.

`synthesize(label, rng, mix, hint)` writes the assistant side of one inspection after Pixel
Reasoner. A single image either answers at once, verdict first ("No marks: ...", "A pit at the
...: ..."), or opens with the one zoom sentence and a `<tool_call>` cropping the labelled region
(a sequence: a sentence naming the tiles, then selecting the frames that show it), then an
analysis of the zoomed pixels, verdict first, that says what (for hard and tiny defects only
here) and where, ending in `\\boxed{type}`. Some first crop
a wrong or an over-large region (`loss=False`: masked, as the paper masks wrong operations) and
recover; defect-free items are answered directly or after checking a region (with a `Hint`:
exactly when, and where, the model's own stage-0 cell head scores highest). Between two
assistant turns the caller executes the earlier turn's call with `foveal.operations` and inserts
the environment's message and images; crops are sized here with the same arithmetic
(`pad_and_clamp`, `to_original`, `pixel_region`), so every one runs. No model, no I/O; the same
label and rng seed give the same trajectory. Tests: `pytest -q tests/training/test_trajectories.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.operations import (
    CROP,
    MIN_SIDE_PX,
    SELECT_FRAMES,
    look_box,
    pad_and_clamp,
    pixel_region,
    to_original,
)
from foveal.plant.dataset import BoxN, Label
from foveal.reasoning.prompts import SELECT_SENTENCE, ZOOM_SENTENCE, inspection_prompt

KINDS = ("direct", "single", "wrong1", "wrong2", "refine", "look_none",
         "seq_direct", "seq_single", "seq_zoom", "seq_wrong", "seq_look", "seq_look_none")
Region = tuple[int, int, int, int]  # left, top, right, bottom in original pixels
_SUBTLE = ("hard", "tiny")  # difficulties whose type only the zoom reveals
_ZOOM_KINDS = ("single", "wrong1", "wrong2", "refine")
_SEQ_NONE_SHARE = 0.5  # share of defect-free sequences answered from the overview alone
_EPS = 1e-9


@dataclass(frozen=True)
class AssistantTurn:
    """All the assistant writes in one turn: prose, then one tool call at the end or `\\boxed{}`."""

    text: str
    loss: bool  # False for a deliberately wrong or over-large operation (masked from the loss)


@dataclass(frozen=True)
class Trajectory:
    """The assistant turns of one inspection; the last holds the answer, the others end in a call."""

    item_id: str
    prompt: str
    turns: tuple[AssistantTurn, ...]
    answer: str
    kind: str


@dataclass(frozen=True)
class Hint:
    """What the model itself sees in a defect-free image (its stage-0 cell head): the region
    around its most defect-like cell, and whether that cell scores high enough to look there
    first. With a hint the look and its place follow from the pixels, so the model can learn
    them; without one they are drawn from the mix and at random."""

    box: BoxN
    look: bool
    frame: int | None = None  # a sequence: the frame (0-based) the box is on, the one that peaks highest


@dataclass(frozen=True)
class Mix:
    """Shares of the trajectory kinds (the method's defaults)."""

    single: float = 0.3  # zooming image trajectories: weights of the four zoom kinds
    wrong1: float = 0.2
    wrong2: float = 0.2
    refine: float = 0.3
    easy_direct: float = 0.8  # easy defect images answered from the whole frame
    none_direct: float = 0.8  # defect-free images answered directly (the rest: look_none)
    seq_wrong: float = 0.1  # defective sequences that first select the wrong frames
    named_prompt: float = 0.5  # prompts naming the product and the defect types
    # sequences written as a look-first pointer runs them (`seq_look`, `seq_look_none`): two
    # frames named and selected, a crop inside one of them, the verdict after the crop
    seq_look: float = 0.0

    def __post_init__(self) -> None:
        shares = (self.single, self.wrong1, self.wrong2, self.refine, self.easy_direct,
                  self.none_direct, self.seq_wrong, self.named_prompt, self.seq_look)
        if not all(0.0 <= share <= 1.0 for share in shares):
            raise ValueError(f"every share of {self} must lie in [0, 1]")
        if self.single + self.wrong1 + self.wrong2 + self.refine <= 0.0:
            raise ValueError("at least one zoom kind (single, wrong1, wrong2, refine) needs a share")

    def without_correction(self) -> Mix:
        """The same mix with every zoom single pass and no wrong frames first: the SFT model
        without self-correction trajectories that #9's ablation starts RL from."""
        return dataclasses.replace(self, single=1.0, wrong1=0.0, wrong2=0.0, refine=0.0, seq_wrong=0.0)


# Sentence templates, 3-6 per slot. Whole-frame sentences of subtle defects never name the type.
_APPEARANCE: dict[str, tuple[str, ...]] = {
    "scratch": ("a thin straight bright line", "a thin straight dark line", "a fine straight line"),
    "crack": ("a jagged branching dark fissure", "a dark fissure with branching ends",
              "an irregular dark fissure"),
    "pit": ("a small round cavity", "a small round hole with a dark centre", "a tiny round cavity"),
    "stain": ("a discoloured blotch with soft edges", "a soft-edged discoloured patch",
              "an irregular discoloured blotch"),
    "burn": ("a dark scorched patch with a brownish rim", "a scorched area with a brown rim",
             "a blackened patch ringed in brown"),
    "dent": ("a shallow depression seen from its shading", "a shallow dip shown by soft shading",
             "a shading gradient of a shallow depression"),
}
_BRIDGE = ("Now I will zoom in to look clearer at the {loc}.", "Let me zoom in on the {loc}.",
           "I will crop the {loc} for detail.", "Zooming into the {loc} for a closer look.")
_MISS = ("The {loc} looks clean; the mark is elsewhere.", "Nothing at the {loc}; the mark is elsewhere.",
         "The {loc} is clean; it must be elsewhere.")
_CLEAN = ("The {loc} looks clean.", "Nothing at the {loc}.", "The {loc} crop is clean.")
_MISS_AGAIN = ("The {loc} is clean too.", "The {loc} looks clean as well.", "Nothing at the {loc} either.")
_TOO_SMALL = ("The mark is too small to judge at this scale. Zooming in further.",
              "At this scale the mark is too small to judge; I will zoom in further.",
              "Still too small to tell at this scale; cropping closer around the mark.")
# A single image's turns put their decision first, where the deciding-token weight
# (`forward.decision_weights`) falls: every zoom opens with the one sentence `_ZOOM` and its call
# follows at once; every answer opens with its verdict ("No marks: ..." or "A {type} ...") and
# says where and how it looks after. Measured: with nine varied openings (v4) greedy decoding
# followed the most frequent one whatever the image, then broke off at a place word (drawn at
# random for looks at defect-free parts) with `\boxed{}`, and never zoomed; with answers that
# all opened "The whole frame shows" (v5) the verdict came at the fifth word, outside the weighted
# tokens, and the model answered `none` to every test item.
_ZOOM = ZOOM_SENTENCE
_FINAL = ("A {type}: up close, the {loc} shows {app}.",
          "A {type}: zoomed in, the {loc} shows {app}.",
          "A {type}: the crop of the {loc} shows {app}.",
          "A {type}: the close view of the {loc} reveals {app}.")
_DIRECT = ("A {type} at the {loc}: the whole frame shows {app}.",
           "A {type} at the {loc}, seen as {app}.",
           "A {type} at the {loc}: {app}.")
_NONE_DIRECT = ("No marks: the whole frame shows an even surface.",
                "No marks: the {noun} looks uniform.",
                "No marks: no spots or discolouration anywhere.")
_LOOK_NONE_END = ("No marks: up close, the {loc} is even.",
                  "No marks: the crop of the {loc} shows an even surface.",
                  "No marks: zoomed in, the {loc} is clean.")
_SEQ_SEEN = ("In {tiles} I see a possible {type} near the {loc}.", "A {type} seems visible in {tiles}.",
             "There may be a {type} in {tiles}.")
_SEQ_FAINT = ("A faint mark shows in {tiles}, near the {loc}.", "Something small changes in {tiles}.",
              "A faint irregularity shows in {tiles}.")
_SEQ_WRONG = ("Something looks off in {tiles}.", "In {tiles} there may be a faint mark.",
              "A faint change seems to show in {tiles}.")
_SEQ_BRIDGE = ("Let me view those frames.", "Selecting them for a closer look.", "I will view them larger.")
_SEQ_MISS = ("Nothing shows in {frames}.", "The surface is clean in {frames}.", "No mark in {frames}.")
_SEQ_RETRY = ("Let me view {tiles} instead.", "Selecting {tiles} instead.", "The mark must be in {tiles}.")
_SEQ_ZOOM = ("Frame {frame} (image {image}) shows a small mark at the {loc}.",
             "In frame {frame} (image {image}) the mark sits at the {loc}.",
             "The mark in frame {frame} (image {image}) is at the {loc}.")
_ZOOM_IT = ("Let me zoom in on it.", "Now I will zoom in to look clearer.", "Cropping it for a closer look.")
_SEQ_FINAL = ("A {type}: the selected frames show {app}.", "A {type}: seen larger, the frames show {app}.",
              "A {type}: in the selected frames I see {app}.")
_SEQ_NONE_DIRECT = ("No marks: all {n} tiles look alike.", "No marks: all {n} tiles look even.",
                    "No marks: the overview shows {n} clean, uniform tiles.")
_SEQ_NONE_OPEN = ("The tiles look clean; let me check {tiles} closer.",
                  "Nothing stands out; I will view {tiles} to be sure.",
                  "No tile shows a clear mark; checking {tiles}.")
_SEQ_NONE_END = ("No marks: the selected frames show an even surface.",
                 "No marks: seen larger, the frames are clean.", "No marks in the selected frames.")
_PLACES = {(0, 0): "upper left", (0, 1): "top centre", (0, 2): "upper right",
           (1, 0): "left edge", (1, 1): "centre", (1, 2): "right edge",
           (2, 0): "lower left", (2, 1): "bottom centre", (2, 2): "lower right"}


def tool_call(name: str, arguments: dict[str, object]) -> str:
    """A `<tool_call>` envelope as the model writes it, floats rounded to 2 decimals.

    >>> tool_call("crop_image_normalized", {"bbox_2d": [0.1234, 0.5, 0.3, 0.75], "target_image": 1})
    '<tool_call>{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.12, 0.5, 0.3, 0.75], \
"target_image": 1}}</tool_call>'
    """
    return f"<tool_call>{json.dumps({'name': name, 'arguments': _rounded(arguments)})}</tool_call>"


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def crop_box(box: BoxN, grid: float = 0.02) -> tuple[float, float, float, float]:
    """`box` (normalized x1, y1, x2, y2) rounded outwards to multiples of `grid`, clamped to
    [0, 1], with 2 decimals; never smaller than the box, never empty.

    >>> crop_box((0.123, 0.5, 0.211, 0.61))
    (0.12, 0.5, 0.22, 0.62)
    >>> crop_box((0.995, 0.06, 1.0, 0.0601))
    (0.98, 0.06, 1.0, 0.08)
    """
    if not 0.0 < grid <= 1.0:
        raise ValueError(f"grid {grid} must lie in (0, 1]")
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in box)
    left, top = _round_down(x1, grid), _round_down(y1, grid)
    right, bottom = _round_up(x2, grid), _round_up(y2, grid)
    if right <= left:
        left, right = (left, min(1.0, round(left + 0.01, 2))) if left < 1.0 else (0.99, 1.0)
    if bottom <= top:
        top, bottom = (top, min(1.0, round(top + 0.01, 2))) if top < 1.0 else (0.99, 1.0)
    return (left, top, right, bottom)


def _round_down(value: float, grid: float) -> float:
    snapped = round(math.floor(value / grid + _EPS) * grid, 2)
    return max(0.0, snapped if snapped <= value + _EPS else math.floor(value * 100 + _EPS) / 100)


def _round_up(value: float, grid: float) -> float:
    snapped = round(math.ceil(value / grid - _EPS) * grid, 2)
    return min(1.0, snapped if snapped >= value - _EPS else math.ceil(value * 100 - _EPS) / 100)


def location(box: Sequence[float]) -> str:
    """Where a box's centre lies, in words.

    >>> location((0.1, 0.1, 0.2, 0.2)), location((0.4, 0.45, 0.6, 0.55)), location((0.8, 0.5, 0.9, 0.6))
    ('upper left', 'centre', 'right edge')
    """
    x1, y1, x2, y2 = box
    return _PLACES[(min(2, int(1.5 * (y1 + y2))), min(2, int(1.5 * (x1 + x2))))]


def _numbers(frames: Sequence[int], noun: str) -> str:
    """0-based `frames` as the 1-based numbers the model sees, in words.

    >>> _numbers([2], "tile"), _numbers([1, 4], "frame"), _numbers([0, 1, 3], "tile")
    ('tile 3', 'frames 2 and 5', 'tiles 1, 2 and 4')
    """
    numbers = [f + 1 for f in frames]
    if len(numbers) == 1:
        return f"{noun} {numbers[0]}"
    head = ", ".join(str(n) for n in numbers[:-1])
    return f"{noun}s {head} and {numbers[-1]}"


@dataclass(frozen=True)
class _Item:
    """One label being written up: its rng and the noun the prose uses for the part."""

    label: Label
    rng: random.Random
    noun: str
    hint: Hint | None = None
    # the token grid (rows, cols) of the whole view of a single image, or of one frame of a
    # sequence (each selected frame is shown whole), when known
    grid: tuple[int, int] | None = None

    @property
    def size(self) -> Region:
        return (0, 0, self.label.width, self.label.height)

    @property
    def subtle(self) -> bool:
        return self.label.difficulty in _SUBTLE

    def say(self, templates: Sequence[str], **fields: object) -> str:
        usable = [t for t in templates if fields.get("loc") is not None or "{loc}" not in t]
        return self.rng.choice(usable).format(noun=self.noun, type=self.label.defect_type, **fields)

    def appearance(self) -> str:
        kind = self.label.defect_type
        return self.rng.choice(_APPEARANCE.get(kind, (f"a clear {kind} mark",)))


Turns = tuple[AssistantTurn, ...]
Builder = Callable[[_Item], Turns | None]  # None: this kind does not fit the label


def _call(text: str, name: str, arguments: dict[str, object], loss: bool = True) -> AssistantTurn:
    return AssistantTurn(f"{text}\n{tool_call(name, arguments)}", loss)


def _crop(text: str, box: BoxN, image: int, loss: bool = True) -> AssistantTurn:
    return _call(text, CROP, {"bbox_2d": list(box), "target_image": image}, loss)


def _select(text: str, frames: Sequence[int], loss: bool = True) -> AssistantTurn:
    return _call(text, SELECT_FRAMES, {"target_frames": [f + 1 for f in frames]}, loss)


def _answer(text: str, answer: str) -> AssistantTurn:
    return AssistantTurn(f"{text} \\boxed{{{answer}}}", True)


def _padded_px(box: BoxN, region: Region) -> Region:
    """The pixels a crop of `box` in the image showing `region` covers (as operations._crop)."""
    return pixel_region(to_original(pad_and_clamp(box), region))


def _grow(box: BoxN, region: Region) -> BoxN:
    """`box` widened until its padded crop of `region` exceeds MIN_SIDE_PX on each side."""
    for _ in range(60):
        left, top, right, bottom = _padded_px(box, region)
        if min(right - left, bottom - top) > MIN_SIDE_PX:
            return box
        x1, y1, x2, y2 = box
        box = crop_box((x1 - 0.02, y1 - 0.02, x2 + 0.02, y2 + 0.02))
    return box


def _target(item: _Item) -> BoxN:
    """The correct crop of image 1 (`_look_at` the label's box)."""
    if item.label.bbox is None:
        raise ValueError(f"item {item.label.id} is defective but has no bbox")
    return _look_at(item, item.label.bbox)


def _look_at(item: _Item, box: BoxN) -> BoxN:
    """The crop of a labelled `box` on an image shown whole (a single image's view, or a
    selected frame). With its token grid known: the `look_box` of the cell holding the box's
    centre, when its padded crop holds the whole box (a box the model can write by pointing at
    that token, and the box a grounded pointer writes); else the box on the 0.02 grid, grown to
    a valid size."""
    tight = _grow(crop_box(box), item.size)
    if item.grid is None:
        return tight
    rows, cols = item.grid
    x1, y1, x2, y2 = box
    row = min(max(int((y1 + y2) / 2 * rows), 0), rows - 1)
    col = min(max(int((x1 + x2) / 2 * cols), 0), cols - 1)
    look = look_box(rows, cols, row, col)
    left, top, right, bottom = pad_and_clamp(look)
    holds = left <= x1 + _EPS and top <= y1 + _EPS and right >= x2 - _EPS and bottom >= y2 - _EPS
    return look if holds else tight


def _random_box(rng: random.Random, low: int, high: int) -> BoxN:
    """A box of `low`..`high` hundredths per side at a random place, in hundredths."""
    width, height = rng.randint(low, high), rng.randint(low, high)
    left, top = rng.randint(0, 100 - width), rng.randint(0, 100 - height)
    return (left / 100, top / 100, (left + width) / 100, (top + height) / 100)


def _away(item: _Item, avoid: Sequence[str]) -> BoxN | None:
    """A 0.1-0.3 box whose padded crop misses the defect by a pixel or more, in a place not
    named in `avoid`; None when 40 tries find none."""
    bbox = item.label.bbox or (0.0, 0.0, 1.0, 1.0)
    w, h = item.label.width, item.label.height
    for _ in range(40):
        box = _grow(_random_box(item.rng, 10, 30), item.size)
        left, top, right, bottom = _padded_px(box, item.size)
        apart = right < bbox[0] * w or left > bbox[2] * w or bottom < bbox[1] * h or top > bbox[3] * h
        if apart and location(box) not in avoid:
            return box
    return None


def _big(item: _Item, target: BoxN) -> BoxN | None:
    """An over-large box, 0.35-0.6 of the frame per side, holding `target`; None if none fits."""
    sides: list[tuple[int, int]] = []
    for low, high in ((target[0], target[2]), (target[1], target[3])):
        start, end = math.floor(low * 100 + _EPS), math.ceil(high * 100 - _EPS)
        if end - start > 60:
            return None
        side = item.rng.randint(max(35, end - start), 60)
        sides.append((item.rng.randint(max(0, end - side), min(start, 100 - side)), side))
    (left, width), (top, height) = sides
    return (left / 100, top / 100, (left + width) / 100, (top + height) / 100)


def _final(item: _Item, templates: Sequence[str] = _FINAL, loc: str | None = None) -> AssistantTurn:
    return _answer(item.say(templates, app=item.appearance(), loc=loc), item.label.defect_type)


def _direct(item: _Item) -> Turns:
    if item.label.defect_type == NO_DEFECT:
        return (_answer(item.say(_NONE_DIRECT), NO_DEFECT),)
    loc = location(_target(item))
    return (_answer(item.say(_DIRECT, loc=loc, app=item.appearance()), item.label.defect_type),)


def _single(item: _Item) -> Turns:
    box = _target(item)
    return (_crop(_ZOOM, box, 1), _final(item, loc=location(box)))


def _wrong(item: _Item, count: int) -> Turns | None:
    box = _target(item)
    loc = location(box)
    wrong: list[BoxN] = []
    for _ in range(count):
        found = _away(item, [loc, *(location(b) for b in wrong)])
        if found is None:
            return None
        wrong.append(found)
    places = [location(b) for b in wrong]
    turns = [_crop(_ZOOM, wrong[0], 1, loss=False)]
    for seen, place, other in zip(places, places[1:], wrong[1:], strict=False):
        turns.append(_crop(f"{item.say(_CLEAN, loc=seen)} {item.say(_BRIDGE, loc=place)}", other, 1,
                           loss=False))
    miss = _MISS if count == 1 else _MISS_AGAIN
    turns.append(_crop(f"{item.say(miss, loc=places[-1])} {item.say(_BRIDGE, loc=loc)}", box, 1))
    return (*turns, _final(item, loc=loc))


def _refine(item: _Item) -> Turns | None:
    box = _target(item)
    big = _big(item, box)
    if big is None or item.label.bbox is None:
        return None
    region = _padded_px(big, item.size)
    left, top, right, bottom = region
    x1, y1, x2, y2 = item.label.bbox
    w, h = item.label.width, item.label.height
    inside = ((x1 * w - left) / (right - left), (y1 * h - top) / (bottom - top),
              (x2 * w - left) / (right - left), (y2 * h - top) / (bottom - top))
    return (_crop(_ZOOM, big, 1, loss=False),
            _crop(item.say(_TOO_SMALL), _grow(crop_box(inside), region), 2), _final(item, loc=location(box)))


def _look_none(item: _Item) -> Turns:
    raw = item.hint.box if item.hint is not None else _random_box(item.rng, 10, 30)
    box = _grow(crop_box(raw), item.size)
    return (_crop(_ZOOM, box, 1), _answer(item.say(_LOOK_NONE_END, loc=location(box)), NO_DEFECT))


def _frame_box(item: _Item, frame: int) -> BoxN | None:
    """The labelled box in `frame`: from `frame_boxes` (rendered data), or the one reviewed box
    `bbox` in frame `bbox_frame` (a sequence reviewed on the dashboard)."""
    boxes = item.label.frame_boxes or []
    if frame < len(boxes):
        return boxes[frame]
    return item.label.bbox if item.label.bbox_frame == frame else None


def _pick_defect_frames(item: _Item) -> list[int]:
    """2-4 defect frames (0-based, sorted), preferring frames whose box is known; a reviewed
    sequence knows one frame only (`bbox_frame`), and that is the one selected."""
    count = len(item.label.frames or ())
    known = item.label.defect_frames or ([item.label.bbox_frame] if item.label.bbox_frame is not None else [])
    shown = [f for f in known if 0 <= f < count]
    boxed = [f for f in shown if _frame_box(item, f) is not None]
    pool = boxed or shown or list(range(count))
    return sorted(item.rng.sample(pool, min(len(pool), item.rng.randint(2, 4))))


def _seq_loc(item: _Item, frames: Sequence[int]) -> str | None:
    boxes = [b for b in (_frame_box(item, f) for f in frames) if b is not None]
    return location(boxes[0]) if boxes else None


def _seq_direct(item: _Item) -> Turns | None:
    if item.label.defect_type != NO_DEFECT:
        return None
    return (_answer(item.say(_SEQ_NONE_DIRECT, n=len(item.label.frames or ())), NO_DEFECT),)


def _seq_select_first(item: _Item, frames: list[int]) -> AssistantTurn:
    tiles = _numbers(frames, "tile")
    templates = _SEQ_FAINT if item.subtle else _SEQ_SEEN
    text = f"{item.say(templates, tiles=tiles, loc=_seq_loc(item, frames))} {item.say(_SEQ_BRIDGE)}"
    return _select(text, frames)


def _seq_single(item: _Item) -> Turns:
    if item.label.defect_type == NO_DEFECT:
        count = len(item.label.frames or ())
        frames = sorted(item.rng.sample(range(count), min(count, item.rng.randint(2, 3))))
        tiles = _numbers(frames, "tile")
        return (_select(item.say(_SEQ_NONE_OPEN, tiles=tiles), frames),
                _answer(item.say(_SEQ_NONE_END), NO_DEFECT))
    frames = _pick_defect_frames(item)
    return (_seq_select_first(item, frames), _final(item, _SEQ_FINAL))


def _seq_zoom_turns(item: _Item, frames: list[int], first_image: int) -> Turns | None:
    """After selecting `frames` (shown as images first_image...): crop the first boxed one, answer."""
    boxed = [(i, f, b) for i, f in enumerate(frames) if (b := _frame_box(item, f)) is not None]
    if not boxed:
        return None
    position, frame, frame_box = boxed[0]
    box = _grow(crop_box(frame_box), item.size)
    loc, image = location(box), first_image + position
    text = f"{item.say(_SEQ_ZOOM, frame=frame + 1, image=image, loc=loc)} {item.say(_ZOOM_IT)}"
    return (_crop(text, box, image), _final(item, loc=loc))


def _seq_zoom(item: _Item) -> Turns | None:
    frames = _pick_defect_frames(item)
    rest = _seq_zoom_turns(item, frames, 2)
    return None if rest is None else (_seq_select_first(item, frames), *rest)


def _seq_wrong(item: _Item) -> Turns | None:
    shown = set(item.label.defect_frames or ())
    clean = [f for f in range(len(item.label.frames or ())) if f not in shown]
    if not clean or not shown:
        return None
    wrong = sorted(item.rng.sample(clean, min(len(clean), item.rng.randint(1, 3))))
    right = _pick_defect_frames(item)
    first = _select(f"{item.say(_SEQ_WRONG, tiles=_numbers(wrong, 'tile'))} {item.say(_SEQ_BRIDGE)}",
                    wrong, loss=False)
    retry = (f"{item.say(_SEQ_MISS, frames=_numbers(wrong, 'frame'))} "
             f"{item.say(_SEQ_RETRY, tiles=_numbers(right, 'frame'))}")
    rest = _seq_zoom_turns(item, right, 2 + len(wrong)) if item.subtle else None
    return (first, _select(retry, right), *(rest or (_final(item, _SEQ_FINAL),)))


def _look_selection(item: _Item, frame: int) -> list[int]:
    """`frame` and one other frame drawn at random, sorted (0-based): what a look-first pointer
    selects, the frame whose own look peaks highest and the best tile besides it."""
    others = [f for f in range(len(item.label.frames or ())) if f != frame]
    return sorted([frame, item.rng.choice(others)]) if others else [frame]


def _select_first(frames: list[int]) -> AssistantTurn:
    """A look-first sequence's first turn, word for word as the pointer writes it."""
    return _select(SELECT_SENTENCE.format(tiles=_numbers(frames, "tile")), frames)


def _seq_look(item: _Item) -> Turns | None:
    """A defective sequence as a look-first pointer runs it: a defect frame and another
    selected, the defect cropped in its frame, the verdict after the crop."""
    count = len(item.label.frames or ())
    boxes = {f: b for f in (item.label.defect_frames or range(count))
             if 0 <= f < count and (b := _frame_box(item, f)) is not None}
    if item.label.defect_type == NO_DEFECT or not boxes:
        return None
    frame = item.rng.choice(sorted(boxes))
    frames = _look_selection(item, frame)
    box = _look_at(item, boxes[frame])
    return (_select_first(frames), _crop(_ZOOM, box, 2 + frames.index(frame)),
            _final(item, loc=location(box)))


def _seq_look_none(item: _Item) -> Turns | None:
    """A defect-free sequence as a look-first pointer runs it: with a `Hint`, the frame that
    peaks highest under the model's own cell head and another selected and the look at that
    peak cropped (what the pointer does); without one, a frame and a box at random. Clean after
    the crop."""
    if item.label.defect_type != NO_DEFECT:
        return None
    count = len(item.label.frames or ())
    if item.hint is not None and item.hint.frame is not None and 0 <= item.hint.frame < count:
        frame, raw = item.hint.frame, item.hint.box
    else:
        frame, raw = item.rng.randrange(count), _random_box(item.rng, 10, 30)
    frames = _look_selection(item, frame)
    box = _grow(crop_box(raw), item.size)
    return (_select_first(frames), _crop(_ZOOM, box, 2 + frames.index(frame)),
            _answer(item.say(_LOOK_NONE_END, loc=location(box)), NO_DEFECT))


BUILDERS: dict[str, Builder] = {
    "direct": _direct, "single": _single, "wrong1": lambda item: _wrong(item, 1),
    "wrong2": lambda item: _wrong(item, 2), "refine": _refine, "look_none": _look_none,
    "seq_direct": _seq_direct, "seq_single": _seq_single, "seq_zoom": _seq_zoom, "seq_wrong": _seq_wrong,
    "seq_look": _seq_look, "seq_look_none": _seq_look_none,
}


def _image_defect(label: Label, rng: random.Random, mix: Mix, hint: Hint | None) -> tuple[str, ...]:
    if label.difficulty not in _SUBTLE and rng.random() < mix.easy_direct:
        return ("direct",)
    weights = (mix.single, mix.wrong1, mix.wrong2, mix.refine)
    return (rng.choices(_ZOOM_KINDS, weights=weights)[0], "single")


def _image_none(label: Label, rng: random.Random, mix: Mix, hint: Hint | None) -> tuple[str, ...]:
    if hint is not None:
        return ("look_none",) if hint.look else ("direct",)
    return ("direct",) if rng.random() < mix.none_direct else ("look_none", "direct")


def _seq_defect(label: Label, rng: random.Random, mix: Mix, hint: Hint | None) -> tuple[str, ...]:
    if mix.seq_look and rng.random() < mix.seq_look:
        return ("seq_look", "seq_single")
    plain = ("seq_zoom", "seq_single") if label.difficulty in _SUBTLE else ("seq_single",)
    return ("seq_wrong", *plain) if rng.random() < mix.seq_wrong else plain


def _seq_none(label: Label, rng: random.Random, mix: Mix, hint: Hint | None) -> tuple[str, ...]:
    if mix.seq_look and rng.random() < mix.seq_look:
        return ("seq_look_none",)
    return ("seq_direct",) if rng.random() < _SEQ_NONE_SHARE else ("seq_single",)


# (is a sequence, is defective) -> the kinds to try, in order; the last one always fits.
_CHOOSERS: dict[tuple[bool, bool], Callable[[Label, random.Random, Mix, Hint | None], tuple[str, ...]]] = {
    (False, True): _image_defect, (False, False): _image_none,
    (True, True): _seq_defect, (True, False): _seq_none,
}


def synthesize(label: Label, rng: random.Random, mix: Mix = Mix(), hint: Hint | None = None,
               grid: tuple[int, int] | None = None) -> Trajectory:
    """The expert trajectory of `label`, its kind drawn from `mix` with `rng`; a defect-free
    image with a `hint` looks first exactly when the hint says so, at the hint's box. With the
    whole view's token `grid` a zoom on a defect goes to its cell's `look_box` (`_target`)."""
    frames = len(label.frames) if label.frames is not None else 1
    if label.frames is not None and frames < 2:
        raise ValueError(f"sequence {label.id} needs at least 2 frames, has {frames}")
    if rng.random() < mix.named_prompt:
        types = [*DEFECT_TYPES, *([label.defect_type] if label.defect_type not in DEFECT_TYPES else [])]
        prompt, noun = inspection_prompt(label.product, types, frames), label.product.replace("_", " ")
    else:
        prompt, noun = inspection_prompt(frames=frames), "part"
    item = _Item(label, rng, noun, hint, grid)
    for kind in _CHOOSERS[(label.is_sequence, label.defect_type != NO_DEFECT)](label, rng, mix, hint):
        turns = BUILDERS[kind](item)
        if turns is not None:
            return Trajectory(label.id, prompt, turns, label.defect_type, kind)
    raise ValueError(f"no trajectory fits item {label.id}")
