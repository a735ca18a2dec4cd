"""Grounded zooms for compact checkpoints: the box of a crop comes from the model's own vision.

The decoder decides *whether* to zoom (and what to answer after); where the crop goes, a small
from-scratch decoder does not learn to write (measured: v6 writes one box for every image, v8b
a handful of memorised boxes, its first number right on 3 of 38 calls; `docs/model.md`). The
vision tower's cell head, trained in stage 0, reads where the whole view looks off better than
that (its peak cell's crop covers the defect on 84 % of easy, 52 % of hard and 12 % of tiny
FovealBench test defects). So when a compact model with a cell head opens a crop's box
(`"bbox_2d": [`), the engine writes the box: the `operations.look_box` of the next of the whole
view's most defect-like cells (the first crop the most defect-like, a second crop the runner-up),
then the call's end, `], "target_image": 1}}</tool_call>` (the whole frame, whose grid the cell
is on). The head's probabilities are the model's own; the decision to zoom remains the decoder's.

With `rerank` = K (the checkpoint's foveal.json `rerank`, or `--rerank`), the candidates are
first seen at full resolution: when the first box on an image opens, the engine ends the turn
there and the reply lists the top K candidate boxes (`TurnReply.probes`); the loop crops each
from the original frame (`operations.preview`, at `PROBE_PIXELS`: nothing is shown to the model)
and sends the crops with the next request (`TurnRequest.probes`; on Triton the `PROBES` input),
the cell head reads each crop, and the turn goes on with the box of the crop whose peak is
highest, moved so that it is centred on that peak (a second crop takes the runner-up's box as it
is). The candidate's box is centred on a cell of the 448 px view; its crop at full resolution
shows where in that cell's neighbourhood the mark is, so a crop round a long scratch or a mark
near a cell's edge takes all of it in. Measured on 600 defective train23 images
(`bench/look_centring.py`): the crop covers the labelled defect 0.765 -> 0.908 (easy), 0.700 ->
0.709 (hard), 0.194 -> 0.214 (tiny); on FovealBench test the box hit rate rose 0.693 -> 0.814
(session 24, `docs/benchmarks.md`, "Looks centred on their peak"). When the loop has sent the
engine a single frame and the region each image shows (`TurnRequest.source` / `regions`,
`LoopOptions.ship_frame`), the engine cuts the same crops itself and the turn does not stop
(over Triton a zoom is then two model calls instead of four; `docs/serving.md`). The whole view
is 448 px of a 1024-2048 px frame; the crop sees the original pixels, where a hard defect's
cells stand out that the view blurs. Measured on 400 test images (`/work/data/exp/rerank.py`):
the chosen crop holds a hard defect 0.52 -> 0.71 of the time with K = 8 (easy 0.86 -> 0.92, tiny
0.13 -> 0.11).

The answer's type too is read off the tower rather than left to the decoder: when the model
opens `\\boxed{` and begins a defect type's name (it has decided there is a defect), the engine
writes the type the view head reads on the last image shown (the crop; the whole view when it
did not zoom; after a selection, the selected frame that looks worst) and the brace. Measured on
400 shuffled test images (`/work/data/exp/readout.py`): v9's decoder names the type right on
0.169 of the defects, its own view head on the image it last saw 0.313; written this way,
0.234 (the rest are defects the decoder called `none`). `none` stays the decoder's answer, and
so does the decision's share of the confidence: for such an answer it is the decoder's
probability that there is a defect times the head's probability of the type it read
(`TurnReply.answer_prob`, on Triton the `ANSWER_PROB` output).
With probes on (`rerank` > 0), when the last image shown is a grounded crop the type is read on
a tighter look inside it instead: as the answer's `\\boxed{` opens, the engine ends the turn and
asks for one probe, the box of side `TIGHT_SIDE` of the crop centred on the crop's most
defect-like cell (padded like every crop: 0.45 of the crop, about 0.14 of the frame), cropped
from the original frame at `PROBE_PIXELS`; the view head reads the type on that. Measured on
the loop's own crops of 600 test defect images (`/work/data/exp/tight.py`, 167 answered with a
type after a crop): the type right 0.521 -> 0.653 (easy 0.761 -> 0.870, hard 0.494 -> 0.697,
tiny 0.250 -> 0.219); on the 121 crops that hold the defect 0.661 -> 0.818. The crop the view
head reads is smaller and centred on the mark, as the zooms it was trained on were.
In an RL rollout the first token of such an answer carries loss (that there is a defect was the
policy's decision) and the rest of the type does not. A tower with a type reader of its own
(`ConvVisionTower.reader`, fitted by `foveal train readout`) reads the type with it instead of
the view head's classifier, on the same pooled maps; the view head's probabilities in the image
tokens stay as they were. A reader with a backbone of its own (`ConvVisionTower.reader_backbone`,
fine-tuned on tight looks by `foveal train readout --crop-steps`) reads from that backbone's maps
of the same crop; the tower's backbone still makes every image token. With `TurnRequest.sample_type`
(`LoopOptions.sample_type`, RL with `--train reader`) the type is drawn from the reader at the
request's temperature instead of taken as its most likely: then the type is an action of the
rollout, trained by GRPO on the reader alone (`foveal.training.rl`).

A defect verdict's sentence names its type first ("A crack: up close, ..."). When a turn opens
one and its next token begins a type's name, the engine writes the type the tower reads there
too, so the sentence QA staff read and the answer agree; with probes on, the tight look is asked
for at the verdict's first token (`Looks.verdict_open` when the turn stops for it).

Sequences are shown first as one overview of numbered tiles (`operations.overview`), and a
compact model copies tile numbers no better than box numbers (v9 writes "tiles 2, 7 and 8 and 8
and 8" and never a valid `select_frames`: `/work/data/exp/seqcheck.py`). So on a sequence the
pointer ranks the tiles by their most defect-like cell and writes the frame numbers: in the
prose, when the model starts a number right after "tile(s) " or "frame(s) " before any selected
frame is shown, the next two frames and the sentence's end ("2 and 7."); in the call, after
`"target_frames": [`, the same frames (or, when the prose named none, the next two) and the
call's end. A later selection (a retry) takes the next two. Once the selected frames are shown,
a crop's box is the look of the most defect-like cell of the selected frame whose peak is
highest, on that frame's image; what the prose says of them stays the model's own (writing it
as "frame 7 (image 3)." too led to zooms on good parts: 54 of 60 good test sequences rejected,
against 41 without, `/work/data/exp/seqacc.py`).

With `look_first` (the checkpoint's foveal.json `"look_first"`, or `--look-first`), a single
frame is never judged from the whole view: when the first turn opens anything but the zoom
sentence (a verdict: "A crack at the centre: ..." or "No marks: ..."), the engine writes the
zoom sentence instead, and the decoder goes on into a grounded crop and gives its verdict after
it. A sequence is never judged from its overview either. Its first turn is written whole: two
frames named and selected (`SELECT_SENTENCE` and the call). With probes on, the turn first stops
at its first token (written as the selection's first) and asks for every other frame, whole, at
`PROBE_PIXELS` (`FRAMES_PROBE`, `looked_frames`); the selection takes the frame whose own
cell-head peak is highest and the best of the overview's tile ranking besides it (`rank_frames`;
on FovealBench test's sequences the two hold a defect frame 0.89 / 0.73 / 0.63 of easy / hard /
tiny ones, against 0.58 / 0.71 / 0.61 with the tiles alone). The turn after the selected frames
are shown opens with the zoom sentence, so the model crops inside the worse-looking of them
before its verdict (v9's own second turns on sequences were mostly broken text: "The mark in
frame 2 (image 2 (image 2d": [..."); measured in session 20, `docs/benchmarks.md` "Sequences
look too"). Inspections without operations (`TurnRequest.operations` False, on Triton the
`OPERATIONS` input) answer as they would. Measured on FovealBench test (session 18,
`docs/benchmarks.md`, "Look first"): v9 named 236 of 1,000 single images' defects from the whole
view, and its type was right 0.59 of the time on easy and 0.31 on hard ones against 0.87 and
0.79 after a crop that held the defect; looking first lifts type accuracy 0.332 -> 0.408 and
puts an evidence box on most defects. Looking only before a defect is named (not before `none`)
gave 0.400 and cost 1.1 F1 points; looking before every verdict gives back that point.

It applies greedy and sampled alike. The tokens the engine writes are flagged
(`TurnReply.forced`) and the loop gives them no loss, so an RL rollout's box or frames are not
trained as the policy's choice: its actions are the decision to look and whether there is a
defect (an answer's first token, above). Real
Qwen2.5-VL checkpoints (no cell head) write their own coordinates and frames.
Tests: `pytest tests/reasoning/test_pointer.py`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import torch

from foveal.domain import DEFECT_TYPES, NO_DEFECT
from foveal.model.loader import VLM
from foveal.model.pixels import normalized
from foveal.operations import SELECT_FRAMES, ImageBudget, look_at, look_box, pad_and_clamp
from foveal.reasoning.prompts import SELECT_SENTENCE, ZOOM_SENTENCE

TRIGGER = '"bbox_2d": ['
CLOSE = '], "target_image": 1}}</tool_call>'  # the call's only valid ending on the whole frame
MAX_LOOKS = 32  # candidate cells kept per inspection, most defect-like first
FRAMES_TRIGGER = '"target_frames": ['
FRAMES_CLOSE = ']}}</tool_call>'
ANSWER_TRIGGER = "\\boxed{"
VERDICT = "A {name}"  # how a defect verdict's sentence opens in the trajectories: "A crack: ..."
# a candidate's crop is scored at this many pixels (336 x 336), not the model's 448 x 448: on 240
# test defects the chosen crop held a hard one 0.71 of the time against 0.73 at 448 (0.54 with no
# rerank), and the tower runs 7 ms on it against 24 (`/work/data/exp/rerank_res.py`)
PROBE_PIXELS = 336 * 336
# the answer's type is read on a look of this side (normalized to the crop, before its padding)
# centred on the crop's most defect-like cell: 0.25 read best of 0.25 / 0.375 / 0.5 at 224, 336 and
# 448 px on 167 test crops (`/work/data/exp/tight.py`)
TIGHT_SIDE = 0.25
# `TurnReply.probe_image` of a sequence's frame probes: probe k is the whole of the k-th frame of
# `looked_frames`, at `PROBE_PIXELS` (image numbers are 1-based; 0 means no probes)
FRAMES_PROBE = -1
# every other frame is looked at: a defect shows on a run of frames as the part moves, and on the
# test sequences every other frame chose as well as every frame (the selection held a defect
# frame 0.89 / 0.73 / 0.63 of easy / hard / tiny ones, against 0.82 / 0.77 / 0.61) at half the cost
FRAMES_STRIDE = 2
FRAMES_PER_LOOK = 2  # frames per selection (the trajectories select 2-4 of the frames that show it)
_NAMING = re.compile(r"(?:^|\W)(?:tiles?|frames?) $")  # prose about to name frame numbers


def tight_look(x: float, y: float) -> tuple[float, float, float, float]:
    """The tight look of side `TIGHT_SIDE` centred on (x, y) of an image, kept inside it
    (normalized to that image).

    >>> tight_look(0.5, 0.5), tight_look(0.02, 0.99)
    ((0.375, 0.375, 0.625, 0.625), (0.0, 0.75, 0.25, 1.0))
    """
    def start(centre: float) -> float:
        return round(min(max(centre - TIGHT_SIDE / 2, 0.0), 1.0 - TIGHT_SIDE), 3)
    x1, y1 = start(x), start(y)
    return (x1, y1, round(x1 + TIGHT_SIDE, 3), round(y1 + TIGHT_SIDE, 3))


def looked_frames(count: int) -> list[int]:
    """The frames (1-based) of a `count`-frame sequence that frame probes show, in order.

    >>> looked_frames(12), looked_frames(3)
    ([1, 3, 5, 7, 9, 11], [1, 3])
    """
    return list(range(1, count + 1, FRAMES_STRIDE))


def probe_budget(budget: ImageBudget) -> ImageBudget:
    """The pixel budget the probes' crops are cut at: the model's, capped at `PROBE_PIXELS`."""
    return replace(budget, max_pixels=min(budget.max_pixels, PROBE_PIXELS),
                   min_pixels=min(budget.min_pixels, PROBE_PIXELS))


@dataclass
class Looks:
    """One inspection's candidate boxes, most defect-like first, and the ones already written."""

    boxes: list[tuple[float, float, float, float]]
    used: int = 0
    queue: list[int] = field(default_factory=list)  # tokens still to write for the open box
    # sequences: 1-based frame numbers, most defect-like tile first; the frames this turn's prose
    # named (the call repeats them); how many frames the earlier selections took
    frames: list[int] = field(default_factory=list)
    named: list[int] | None = None
    frames_used: int = 0
    images: int = 0  # images the session has shown so far
    box_image: int = 1  # the image the boxes are on (a sequence: the selected frame that looks worst)
    selecting: list[int] = field(default_factory=list)  # a selection's frames, until they are shown
    last: tuple[npt.NDArray[np.float32], tuple[int, ...]] | None = None  # the last image shown
    reading: tuple[str, float] | None = None  # the view head's type on `last` and its probability
    answered: float | None = None  # set when an answer's type was just written: its probability
    # what the view classifier read `reading` from (`CellHead.pooled`, (2C,)): the engine hands
    # it on with an answer's type (`foveal train readout` refits the classifier on these)
    read_features: torch.Tensor | None = None
    ranked: int = 0  # the image whose candidates were ranked at full resolution (0: none yet)
    box_written: bool = False  # a grounded box was written and its crop not yet shown
    crop_image: int = 0  # the image (1-based) that the last grounded crop showed (0: none)
    read_probed: int = 0  # the crop image whose tight look was asked for (0: none yet)
    asking: str = ""  # what the outstanding probes are for: "rank" (candidate looks) or "read"
    answer_open: bool = False  # the turn stopped for a tight look right after `\\boxed{`
    # the turn stopped for a tight look right after this first token of a verdict sentence
    # ("A " of "A crack: ..."), which goes on to name the type
    verdict_open: int | None = None
    frames_probed: bool = False  # a sequence's frames were asked for, to rank them by their own looks
    sample: float = 0.0  # > 0: the answer's type is sampled from the reader at this temperature

    def next_frames(self) -> list[int]:
        """The next `FRAMES_PER_LOOK` frames of the ranking, in ascending order (wrapping round)."""
        n = len(self.frames)
        take = [self.frames[(self.frames_used + k) % n] for k in range(min(FRAMES_PER_LOOK, n))]
        self.frames_used += len(take)
        return sorted(take)


class CellPointer:
    """Writes crop boxes and frame numbers from a compact tower's cell head (see the module
    docstring)."""

    def __init__(self, vlm: VLM, answers: bool = True, rerank: int = 0, tight: bool = True,
                 look_first: bool = False) -> None:
        tower = vlm.model.model.visual
        if getattr(tower, "head", None) is None:
            raise ValueError("the model's vision tower has no cell head: nothing to point with")
        self.tower = tower
        self.tokenizer = vlm.tokenizer
        self.spec = vlm.chat.spec
        self.merge = int(tower.spatial_merge_size)
        vocab = self.tokenizer.get_vocab()
        # tokens whose text ends the trigger: only after one of them is the text checked
        self._closers = frozenset(i for i in vocab.values() if self._text([i]).endswith("["))
        self._brace_closers = frozenset(i for i in vocab.values() if self._text([i]).endswith("{"))
        # the answers the head can read: the first token of each defect type's name (as the loop
        # reads them), not shared with `none`'s
        self.answers = answers
        # candidate looks scored at full resolution before the first box on an image (0: none)
        self.rerank = max(0, min(int(rerank), MAX_LOOKS))
        # with probes on: an answer after a grounded crop reads its type on a tight look inside it
        self.tight = bool(tight and self.rerank and answers)
        # every verdict comes after a look, when the request allows operations: a single frame's
        # first turn that opens anything but the zoom sentence gets the zoom sentence instead; a
        # sequence's first turn is its selection, and the turn after it opens with the sentence
        self.look_first = look_first
        self._zoom = self._encode(ZOOM_SENTENCE)
        self._select_first = self._encode(SELECT_SENTENCE.format(tiles="tiles 1 and 2"))[0]
        none = self._encode(NO_DEFECT)[0]
        self._type_starts = frozenset(self._encode(n)[0] for n in DEFECT_TYPES[1:]) - {none}
        # a verdict sentence names its type first ("A crack: up close, ..."): its first tokens
        # as the tokenizer writes them for each type ("A " or "A", then " dent")
        self._verdict_starts = frozenset(self._encode(VERDICT.format(name=n))[0] for n in DEFECT_TYPES[1:])
        # backbone maps (C, rows, cols) of the images of the turn being run, keyed by the id of
        # their patch array: the engine's encoding and the pointer's readings share one backbone
        # pass per image. Valid only while the turn's chunks hold those arrays: the engine
        # clears it at the start and end of every turn (`forget`), so an id is never reused.
        self.maps: dict[int, torch.Tensor] = {}
        self.generator: torch.Generator | None = None  # the engine's, for sampled type reads

    def forget(self) -> None:
        self.maps.clear()

    def backbone_maps(self, patches: Sequence[npt.NDArray[np.float32]], grids: Sequence[tuple[int, ...]]
                      ) -> list[torch.Tensor]:
        """The backbone's maps (C, rows, cols) of images given as their patches and grids: those
        seen this turn from `maps`, the others in one backbone pass per image size."""
        tower = self.tower
        missing = [k for k, p in enumerate(patches) if id(p) not in self.maps]
        if missing:
            device = next(tower.parameters()).device
            images = [tower.images(torch.from_numpy(patches[k]).to(device, tower.dtype),
                                   torch.tensor([list(grids[k])]))[0] for k in missing]
            for k, fmap in zip(missing, tower.feature_maps(images), strict=True):
                self.maps[id(patches[k])] = fmap
        return [self.maps[id(p)] for p in patches]

    @staticmethod
    def available(vlm: VLM) -> bool:
        return getattr(vlm.model.model.visual, "head", None) is not None

    @torch.inference_mode()
    def looks(self, patches: npt.NDArray[np.float32], grid: tuple[int, ...]) -> Looks:
        """The candidate boxes of one whole view, given as the chunk's patches and grid."""
        return Looks(self._boxes(self._defect(patches, grid)), images=1, last=(patches, grid))

    @staticmethod
    def _boxes(defect: torch.Tensor) -> list[tuple[float, float, float, float]]:
        rows, cols = defect.shape
        boxes: list[tuple[float, float, float, float]] = []
        for index in torch.argsort(defect.flatten(), descending=True).tolist():
            box = look_box(rows, cols, index // cols, index % cols)
            if box not in boxes:
                boxes.append(box)
            if len(boxes) == MAX_LOOKS:
                break
        return boxes

    @torch.inference_mode()
    def frame_looks(self, patches: npt.NDArray[np.float32], grid: tuple[int, ...], frames: int) -> Looks:
        """The frame ranking of a sequence's overview of `frames` tiles (no crop candidates: a crop
        on the overview is not allowed)."""
        defect = self._defect(patches, grid)
        rows, cols = defect.shape
        tile_cols = math.ceil(math.sqrt(frames))  # the layout of `operations.overview`
        tile_rows = math.ceil(frames / tile_cols)
        score = [0.0] * frames
        for r in range(rows):
            for c in range(cols):
                tile = int((r + 0.5) / rows * tile_rows) * tile_cols + int((c + 0.5) / cols * tile_cols)
                if tile < frames:
                    score[tile] = max(score[tile], float(defect[r, c]))
        order = sorted(range(frames), key=lambda i: (-score[i], i))
        return Looks([], frames=[i + 1 for i in order], images=1, last=(patches, grid))

    @torch.inference_mode()
    def shown(self, looks: Looks, patches: list[npt.NDArray[np.float32]],
              grids: list[tuple[int, ...]]) -> None:
        """Images a later turn shows: after a selection the pointer was written, its frames;
        the boxes go on the one whose most defect-like cell is highest."""
        if len(patches):
            looks.last, looks.reading = (patches[-1], tuple(grids[-1])), None
            if looks.box_written:  # the last of these images is that box's crop
                looks.crop_image, looks.box_written = looks.images + len(patches), False
        if looks.selecting and len(patches) == len(looks.selecting):
            maps = [self._defect(p, g) for p, g in zip(patches, grids, strict=True)]
            best = max(range(len(maps)), key=lambda i: float(maps[i].max()))
            looks.boxes, looks.used = self._boxes(maps[best]), 0
            looks.box_image = looks.images + best + 1
            looks.last = patches[best], tuple(grids[best])  # an answer reads the worst-looking frame
        looks.selecting = []
        looks.images += len(patches)

    @torch.inference_mode()
    def read(self, looks: Looks) -> tuple[str, float]:
        """The defect type the view head reads on the last image shown and its probability
        among the defect types (never `none`: the decoder has said there is a defect)."""
        if looks.reading is None:
            assert looks.last is not None
            looks.reading, looks.read_features = self._type_of(self._reader_maps(*looks.last), looks.sample)
        return looks.reading

    def _type_of(self, maps: torch.Tensor, sample: float = 0.0) -> tuple[tuple[str, float], torch.Tensor]:
        """The defect type the tower reads on one image's maps (1, C, rows, cols) (its type
        reader, or the view head without one): the most likely, or with `sample` > 0 one drawn
        at that temperature; its probability among the defect types; and the pooled features it
        was read from."""
        pooled = self.tower.head.pooled(maps)
        logits = self.tower.type_logits(pooled)[0].float()[1:len(DEFECT_TYPES)]
        probs = torch.softmax(logits, dim=0)
        if sample > 0:
            drawn = torch.multinomial(torch.softmax(logits / sample, dim=0), 1, generator=self.generator)
            best = int(drawn[0])
        else:
            best = int(probs.argmax())
        return (DEFECT_TYPES[1 + best], float(probs[best])), pooled[0].float()

    def _maps(self, patches: npt.NDArray[np.float32], grid: tuple[int, ...]) -> torch.Tensor:
        """The backbone's maps of one image given as its patches and grid: (1, C, rows, cols)."""
        return self.backbone_maps([patches], [grid])[0][None]

    def _reader_maps(self, patches: npt.NDArray[np.float32], grid: tuple[int, ...]) -> torch.Tensor:
        """The maps a type is read from of one image given as its patches and grid (1, C, rows,
        cols): the tower's (`_maps`), or its type reader's backbone's when it has one."""
        if self.tower.reader_backbone is None:
            return self._maps(patches, grid)
        device = next(self.tower.parameters()).device
        pixels = torch.from_numpy(patches).to(device, self.tower.dtype)
        image = self.tower.images(pixels, torch.tensor([list(grid)]))
        maps: torch.Tensor = self.tower.reader_maps(image)[0][None]
        return maps

    def _defect(self, patches: npt.NDArray[np.float32], grid: tuple[int, ...]) -> torch.Tensor:
        return self._defects([(patches, grid)])[0]

    def _defects(self, images: Sequence[tuple[npt.NDArray[np.float32], tuple[int, ...]]]
                 ) -> list[torch.Tensor]:
        """Per image (its patches and grid), P(defect) per cell (rows, cols); images of one size
        run through the backbone as one batch."""
        maps = self.backbone_maps([p for p, _ in images], [g for _, g in images])
        return [self._defect_of(fmap) for fmap in maps]

    def _cell_maps(self, pixels: list[torch.Tensor], low_precision: bool = False) -> list[torch.Tensor]:
        """P(defect) per cell of each normalized (3, H, W) image."""
        return [self._defect_of(fmap) for fmap in self.tower.feature_maps(pixels, probe=low_precision)]

    def _defect_of(self, fmap: torch.Tensor) -> torch.Tensor:
        """P(defect) per cell (rows, cols) of one image's backbone maps (C, rows, cols)."""
        cells = self.tower.head(fmap[None])  # (1, K, rows, cols)
        return 1.0 - torch.softmax(cells.float(), dim=1)[0, 0]

    def forced(self, looks: Looks, generated: list[int], token: int, operations: bool = True) -> list[int]:
        """What the engine writes instead of the model's `token`, given the turn's tokens so far
        (`generated`, without `token`): the zoom sentence instead of a verdict from the whole
        view (`look_first`), a box, frames in a call or frames in prose, the type of an
        answer; or nothing."""
        resumed = looks.answer_open and not generated  # the answer opened before the stop
        opener = generated[0] if len(generated) == 1 else looks.verdict_open if not generated else None
        if not generated:
            looks.verdict_open = None
        if opener is not None and opener in self._verdict_starts and self.answers and looks.last is not None:
            named = self._verdict_tokens(opener, token, looks)
            if named:
                return named
        started = resumed or (not generated and opener is not None)  # a turn resumed after its first token
        if not generated and not started and self._selection_due(looks, operations):
            return self.selection_tokens(looks)
        if self.look_first and operations and not generated and token != self._zoom[0] and not started \
                and self._look_due(looks):
            return list(self._zoom)
        if not generated:
            looks.answer_open = False
        if self.answers and token in self._type_starts and looks.last is not None \
                and (resumed or self._opens(generated, ANSWER_TRIGGER, self._brace_closers)):
            name, looks.answered = self.read(looks)
            return self._encode(name + "}")
        if looks.boxes and self.opens_box(generated):
            return self.box_tokens(looks)
        if not looks.frames:
            return []
        if self._opens(generated, FRAMES_TRIGGER):
            chosen = looks.named or looks.next_frames()
            looks.named, looks.selecting = None, chosen
            return self._encode(", ".join(str(f) for f in chosen) + FRAMES_CLOSE)
        text = self._text([token]).lstrip()
        if not (text[:1].isdigit() and generated and _NAMING.search(self._text(generated[-8:]))):
            return []
        if looks.boxes:  # the frames are shown: what the prose says of them is the model's own
            return []
        looks.named = looks.next_frames()
        *head, last = [str(f) for f in looks.named]
        return self._encode((f"{', '.join(head)} and {last}" if head else last) + ".")

    def _verdict_tokens(self, opener: int, token: int, looks: Looks) -> list[int]:
        """When a verdict sentence's first tokens (`opener`, then the model's `token`) begin to
        name a defect type, the rest of its opening as the engine writes it: the type the tower
        reads (`read`), the one the answer's `\\boxed{}` will hold, so that the sentence and the
        answer agree. Nothing when they name no type ("A mark ...")."""
        start = self._text([opener])
        words = (start + self._text([token]))[len(VERDICT.format(name="")):].strip()
        if not words or not any(n.startswith(words) or words.startswith(n) for n in DEFECT_TYPES[1:]):
            return []
        name, _ = self.read(looks)
        whole = VERDICT.format(name=name)
        if not whole.startswith(start):
            return []
        return self._encode(whole[len(start):])

    def selection_tokens(self, looks: Looks) -> list[int]:
        """A sequence's first turn as the engine writes it with `look_first`: the next frames of
        the ranking named and selected (`SELECT_SENTENCE`, then the call)."""
        chosen = looks.next_frames()
        looks.selecting = chosen
        *head, last = [str(f) for f in chosen]
        tiles = f"tiles {', '.join(head)} and {last}" if head else f"tile {last}"
        call = json.dumps({"name": SELECT_FRAMES, "arguments": {"target_frames": chosen}})
        return self._encode(f"{SELECT_SENTENCE.format(tiles=tiles)}\n<tool_call>{call}</tool_call>")

    def _selection_due(self, looks: Looks, operations: bool) -> bool:
        """A look-first sequence whose first selection the engine has yet to write."""
        return bool(self.look_first and operations and looks.frames and looks.images == 1
                    and not looks.frames_used and not looks.selecting)

    def _frames_due(self, looks: Looks, generated: list[int], operations: bool) -> bool:
        """That selection's first token, with probes on: the frames are to be ranked first."""
        return bool(self.rerank and len(generated) == 1 and not looks.frames_probed
                    and self._selection_due(looks, operations))

    @staticmethod
    def _look_due(looks: Looks) -> bool:
        """Whether a turn starting now owes a look (`look_first`): a single frame's first turn,
        or a sequence's first turn after its selected frames are shown, before any crop."""
        if looks.used or not looks.boxes:
            return False
        if not looks.frames:
            return looks.images == 1
        return not looks.selecting and looks.box_image > 1 and not looks.crop_image

    def wants_probes(self, looks: Looks, generated: list[int], operations: bool = True) -> bool:
        """Whether the turn's tokens so far (the model's next token included) open a crop's box
        on an image whose candidate looks have not yet been seen at full resolution, or open an
        answer after a grounded crop whose tight look has not been asked for, or begin a
        sequence's first turn whose selection a look-first pointer writes (its frames are ranked
        by their own looks first): then the engine ends the turn there and asks for them
        (`probe_request`, `TurnReply.probes`)."""
        if self._frames_due(looks, generated, operations):
            return True
        if self.rerank and looks.boxes and looks.ranked != looks.box_image and self.opens_box(generated):
            return True
        return bool(self.tight and looks.crop_image and looks.crop_image == looks.images
                    and looks.read_probed != looks.crop_image and looks.last is not None
                    and (self._opens(generated, ANSWER_TRIGGER, self._brace_closers)
                         or self._opens_verdict(generated)))

    def _opens_verdict(self, generated: list[int]) -> bool:
        """Whether the turn so far is the first token of a defect verdict's sentence."""
        return len(generated) == 1 and generated[0] in self._verdict_starts

    def probe_request(self, looks: Looks, generated: list[int], operations: bool = True
                      ) -> tuple[list[tuple[float, float, float, float]], int] | None:
        """The probes the engine asks for at this point of the turn (`wants_probes`): the boxes
        and the image (1-based) they are normalized to, or `FRAMES_PROBE` (each box the whole of
        one of `looked_frames`); None when it asks for none. Asking for the frames queues the
        selection's first token, which the engine writes in place of the model's before it stops."""
        if not self.wants_probes(looks, generated, operations):
            return None
        if self._frames_due(looks, generated, operations):
            looks.asking, looks.frames_probed = "frames", True
            looks.queue = [self._select_first]
            return [(0.0, 0.0, 1.0, 1.0)] * len(looked_frames(len(looks.frames))), FRAMES_PROBE
        if self.opens_box(generated):
            looks.asking = "rank"
            return looks.boxes[:self.rerank], looks.box_image
        looks.asking, looks.read_probed = "read", looks.crop_image
        if self._opens_verdict(generated):
            looks.verdict_open = generated[0]
        else:
            looks.answer_open = True
        return [self.tight_box(looks)], looks.crop_image

    @torch.inference_mode()
    def tight_box(self, looks: Looks) -> tuple[float, float, float, float]:
        """The look of side `TIGHT_SIDE` centred on the most defect-like cell of the last image
        shown, normalized to that image."""
        assert looks.last is not None
        defect = self._defect(*looks.last)
        rows, cols = defect.shape
        at = int(defect.flatten().argmax())
        return tight_look((at % cols + 0.5) / cols, (at // cols + 0.5) / rows)

    def probed(self, looks: Looks, probes: Sequence[npt.NDArray[np.uint8] | None]) -> None:
        """The crops of the probes last asked for have come: rank the candidates, or read the
        answer's type on the tight look."""
        asking, looks.asking = looks.asking, ""
        if asking == "read":
            self.read_tight(looks, probes[0] if probes else None)
        elif asking == "frames":
            self.rank_frames(looks, probes)
        else:
            self.rank(looks, probes)

    @torch.inference_mode()
    def read_tight(self, looks: Looks, crop: npt.NDArray[np.uint8] | None) -> None:
        """The view head's type on the tight look's crop becomes the answer's reading (`read`);
        without a crop the reading stays that of the last image shown."""
        if crop is None:
            return
        pixels = torch.from_numpy(normalized(crop, self.spec)).to(self.tower.dtype)
        looks.reading, looks.read_features = self._type_of(self.tower.reader_maps([pixels])[0][None],
                                                           looks.sample)

    @torch.inference_mode()
    def rank(self, looks: Looks, probes: Sequence[npt.NDArray[np.uint8] | None]) -> None:
        """Order the candidates by how defect-like their crops at full resolution look (the
        peak of the cell head on each, `probes[k]` the crop of the k-th box `probe_request`
        asked for, None for a crop that cannot be made) and queue the best one's box: the next
        tokens the engine writes."""
        crops = list(probes[:len(looks.boxes)])
        cells = self._peak_cells(crops, low_precision=True)
        scored = [(cells[k][0] if k in cells else -1.0, k) for k in range(len(crops))]
        order = [k for _, k in sorted(scored, key=lambda pk: (-pk[0], pk[1]))]
        boxes = [looks.boxes[k] for k in order]
        if order and order[0] in cells:  # the winner's look, centred on its peak at full resolution
            _, u, v = cells[order[0]]
            x1, y1, x2, y2 = pad_and_clamp(boxes[0])  # the region its crop shows
            boxes[0] = look_at(x1 + u * (x2 - x1), y1 + v * (y2 - y1), boxes[0][2] - boxes[0][0])
        looks.boxes = boxes + looks.boxes[len(order):]
        looks.used, looks.ranked = 0, looks.box_image
        looks.queue = self.box_tokens(looks)

    @torch.inference_mode()
    def rank_frames(self, looks: Looks, probes: Sequence[npt.NDArray[np.uint8] | None]) -> None:
        """A sequence's frames seen one by one (`probes[k]` the k-th of `looked_frames` at
        `PROBE_PIXELS`, None when missing): the selection takes the frame whose cell-head peak is
        highest and the best of the overview's tile ranking besides it, then the rest by their
        peaks and tiles; queue the rest of the selection the engine writes (its first token is
        already written)."""
        looked = looked_frames(len(looks.frames))
        peaks = self._peaks(probes[:len(looked)])
        if peaks:
            by_look = [looked[k] for k in sorted(peaks, key=lambda k: (-peaks[k], k))]
            tiles = [f for f in looks.frames if f != by_look[0]]
            order = [by_look[0], *tiles[:1]]
            looks.frames = list(dict.fromkeys([*order, *by_look, *tiles]))
        written = self.selection_tokens(looks)
        looks.queue = written[1:] if written[:1] == [self._select_first] else written

    def _peaks(self, crops: Sequence[npt.NDArray[np.uint8] | None]) -> dict[int, float]:
        """The cell head's peak on each crop given (by its index; None: no crop, no peak)."""
        return {k: peak for k, (peak, _, _) in self._peak_cells(crops).items()}

    def _peak_cells(self, crops: Sequence[npt.NDArray[np.uint8] | None], low_precision: bool = False
                    ) -> dict[int, tuple[float, float, float]]:
        """The cell head's peak on each crop given (by its index; None: no crop, no peak) and
        where it is: the peak cell's centre (x, y), normalized to the crop. `low_precision`: the
        backbone runs them in the tower's `probe_dtype`."""
        shown = [k for k, crop in enumerate(crops) if crop is not None]
        pixels = [torch.from_numpy(normalized(crops[k], self.spec)).to(self.tower.dtype) for k in shown]  # type: ignore[arg-type]
        out: dict[int, tuple[float, float, float]] = {}
        for k, defect in zip(shown, self._cell_maps(pixels, low_precision), strict=True):
            rows, cols = defect.shape
            at = int(defect.flatten().argmax())
            out[k] = float(defect.flatten()[at]), (at % cols + 0.5) / cols, (at // cols + 0.5) / rows
        return out

    def opens_box(self, generated: list[int]) -> bool:
        """Whether the turn's tokens so far end with the opening of a crop's box."""
        return self._opens(generated, TRIGGER)

    def _opens(self, generated: list[int], trigger: str, closers: frozenset[int] | None = None) -> bool:
        if not generated or generated[-1] not in (self._closers if closers is None else closers):
            return False
        return self._text(generated[-8:]).endswith(trigger)

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def box_tokens(self, looks: Looks) -> list[int]:
        """The tokens of the next unused candidate box and the call's end; marks it used
        (after the last candidate, the first again)."""
        box = looks.boxes[looks.used % len(looks.boxes)]
        looks.used += 1
        looks.box_written = True
        close = CLOSE.replace(": 1}", f": {looks.box_image}}}")
        return self._encode(", ".join(f"{round(v, 2)}" for v in box) + close)
