"""The reasoning model as Triton hosts it: the core behind `models/foveal_vl/1/model.py`.

Triton's sequence batcher keys every inspection by a correlation id and hands the python backend
batches of turns from different inspections; this module turns those tensors into
`TurnRequest`s for one `LocalEngine`, which keeps each inspection's key/value cache between its
turns, and turns the replies back into tensors. Numpy in, numpy out, no Triton import, so tests
run it without a server.

Per-request tensors (each with Triton's leading batch dimension of 1):
  TOKENS int64 [n]              tokens the model has not seen (image placeholders included)
  IMAGES uint8 [sum h*w*3]      the chunk's images, raw RGB, in order
  IMAGE_SHAPES int32 [2k]       (h, w) per image
  MAX_NEW_TOKENS int32 [1]      0: append only
  STOP_IDS int64 [s]            generation stops at any of these
  WATCH int64 [w]               ids whose log-probabilities are reported per step
  TEMPERATURE fp32 [1]          0: greedy
  RESTART bool [1]              forget the cache first (re-encoding baseline)
  FRAMES int32 [1]              frames of the inspection (> 1: a sequence; grounded frame choice)
  PROBES uint8 [sum h*w*3]      crops of the candidate looks a reply asked for, raw RGB, in order
  PROBE_SHAPES int32 [2k]       (h, w) per crop; (0, 0) for a crop that could not be made
  OPERATIONS bool [1]           the inspection may call operations (absent: true; false: no-ops)
  SOURCE uint8 [h*w*3]          the inspection's full-resolution frame, raw RGB, sent once (a
                                single frame): the model cuts the pointer's probes from it
  SOURCE_SHAPE int32 [2]        its (h, w)
  REGIONS int32 [4k]            per image of IMAGES, the region of SOURCE it shows (left, top,
                                right, bottom); -1s for an image that shows none
  START / END int32 [1]         sequence controls (Triton fills them)
Outputs: GENERATED int64 [g], LOGPROBS fp32 [g], WATCH_LOGPROBS fp32 [max(1, g), w],
  FORCED bool [g] (tokens the engine wrote: a grounded box, frames or answer type) and
  ANSWER_PROB fp32 [1] (a grounded answer's type probability; NaN when there was none),
  PROBE_BOXES fp64 [4k] (the turn stopped where a grounded box opens: the candidate boxes whose
  crops the next request sends as PROBES; empty otherwise) and PROBE_IMAGE int32 [1] (the image
  they are on, 1-based; -1: box k is the whole of a sequence's frame 2k+1, every other frame;
  0 when there are none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from foveal.errors import FovealError
from foveal.model.chat import IMAGE, TEXT, Chunk
from foveal.model.loader import load, set_tower_precision
from foveal.model.pixels import patchify
from foveal.reasoning.engine import LocalEngine, TurnReply, TurnRequest

Array = npt.NDArray[np.generic]
Tensors = Mapping[str, Array]


class TurnInputError(FovealError):
    """A request's tensors do not describe a valid turn (the client's bug, not the model's)."""


@dataclass(frozen=True)
class Control:
    correlation_id: int
    start: bool
    end: bool


class ModelHost:
    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.image_pad = engine.chat.image_pad

    @classmethod
    def load(cls, weights: Path, idle_timeout_s: float = 120.0, vision: str = "torch",
             device: str = "auto", threads: int = 0, tower_precision: str = "auto") -> ModelHost:
        """`vision`: "torch" (the model's own tower) or "onnx" (onnxruntime; compact model only).
        `device`: "auto" (CUDA when torch sees a GPU), "cpu" or "cuda[:n]". `threads`: torch's
        intra-op threads on the CPU (0: torch's default, one per core). `tower_precision`: what a
        compact tower's backbones run in (`loader.set_tower_precision`; "auto": bfloat16 where
        the device runs it natively)."""
        if threads < 0:
            raise ValueError(f"threads must be 0 (torch's default) or more, not {threads}")
        if threads:
            torch.set_num_threads(threads)
        vlm = load(weights)
        target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        vlm.model.to(torch.device(target))  # type: ignore[arg-type]  # transformers types `to` oddly
        set_tower_precision(vlm, tower_precision)
        if vision not in ("torch", "onnx"):
            raise ValueError(f"vision must be 'torch' or 'onnx', not {vision!r}")
        features = None
        if vision == "onnx":
            from foveal.serving.onnx_vision import OnnxVision

            features = OnnxVision.for_model(vlm)
        return cls(LocalEngine(vlm, idle_timeout_s=idle_timeout_s, vision=features))

    def execute(self, batch: Sequence[tuple[Tensors, Control]]) -> list[dict[str, Array] | str]:
        """One response per request: output tensors, or an error message for that request alone."""
        self.engine.evict_idle()
        out: list[dict[str, Array] | str] = [""] * len(batch)
        runnable: list[tuple[int, TurnRequest]] = []
        for i, (tensors, control) in enumerate(batch):
            try:
                request = self.request(tensors, control)
            except TurnInputError as exc:
                out[i] = str(exc)
                if control.end:
                    self.engine.release([control.correlation_id])
                continue
            if not request.chunk.ids and request.max_new_tokens == 0:  # only the END of a sequence
                self.engine.release([request.session])
                out[i] = _outputs(TurnReply(watch=np.zeros((1, len(request.watch)), np.float32)))
                continue
            runnable.append((i, request))
        if runnable:
            replies = self.engine.turns([r for _, r in runnable])
            for (i, _), reply in zip(runnable, replies, strict=True):
                out[i] = _outputs(reply)
        return out

    def request(self, tensors: Tensors, control: Control) -> TurnRequest:
        ids = _row(tensors, "TOKENS").astype(np.int64).tolist()
        images = [view for view in self._images(tensors) if view is not None]
        is_image = [t == self.image_pad for t in ids]
        chunk = Chunk(ids, [IMAGE if f else TEXT for f in is_image], [False] * len(ids))
        spec = self.engine.chat.spec
        for view in images:
            try:
                patches, grid = patchify(view, spec)
            except ValueError as exc:
                raise TurnInputError(str(exc)) from exc
            chunk.patches.append(patches)
            chunk.grids.append(grid)
        expected = sum(spec.tokens(g) for g in chunk.grids)
        if sum(is_image) != expected:
            raise TurnInputError(f"{sum(is_image)} image tokens for images that need {expected}")
        sources = self._images(tensors, "SOURCE", "SOURCE_SHAPE")
        if len(sources) > 1:
            raise TurnInputError(f"SOURCE_SHAPE describes {len(sources)} frames; an inspection sends one")
        source = sources[0] if sources else None
        max_new = int(_row(tensors, "MAX_NEW_TOKENS", np.array([0]))[0])
        if control.start and not control.end and not ids:
            raise TurnInputError("a sequence must start with tokens")
        return TurnRequest(
            session=control.correlation_id, chunk=chunk, max_new_tokens=max(0, max_new),
            stop_ids=frozenset(_row(tensors, "STOP_IDS", np.zeros(0, np.int64)).astype(np.int64).tolist()),
            watch=tuple(_row(tensors, "WATCH", np.zeros(0, np.int64)).astype(np.int64).tolist()),
            temperature=float(_row(tensors, "TEMPERATURE", np.zeros(1, np.float32))[0]),
            restart=control.start or bool(_row(tensors, "RESTART", np.zeros(1, bool))[0]),
            end=control.end, frames=max(1, int(_row(tensors, "FRAMES", np.ones(1, np.int32))[0])),
            probes=tuple(self._images(tensors, "PROBES", "PROBE_SHAPES", empty=True)),
            operations=bool(_row(tensors, "OPERATIONS", np.ones(1, bool))[0]),
            source=source, regions=self._regions(tensors, len(images), source, control.correlation_id))

    def _regions(self, tensors: Tensors, images: int, source: npt.NDArray[np.uint8] | None,
                 session: int) -> tuple[tuple[int, int, int, int] | None, ...]:
        """REGIONS as one region (or None) per image of the chunk, each checked against the frame
        it is of (this request's SOURCE, else the one the session sent)."""
        values = _row(tensors, "REGIONS", np.zeros(0, np.int32)).astype(np.int64)
        if not values.size:
            return ()
        if values.size != 4 * images:
            raise TurnInputError(f"REGIONS holds {values.size} numbers for {images} images (4 each)")
        frame = source if source is not None else self.engine.source_frame(session)
        out: list[tuple[int, int, int, int] | None] = []
        for left, top, right, bottom in values.reshape(-1, 4).tolist():
            if (left, top, right, bottom) == (-1, -1, -1, -1):
                out.append(None)
                continue
            if frame is None:
                raise TurnInputError("REGIONS needs the inspection's SOURCE frame first")
            height, width = frame.shape[:2]
            if not (0 <= left < right <= width and 0 <= top < bottom <= height):
                raise TurnInputError(f"region {(left, top, right, bottom)} is outside the "
                                     f"{width}x{height} SOURCE")
            out.append((left, top, right, bottom))
        return tuple(out)

    @staticmethod
    def _images(tensors: Tensors, data_name: str = "IMAGES", shapes_name: str = "IMAGE_SHAPES",
                empty: bool = False) -> list[npt.NDArray[np.uint8] | None]:
        """The images of `data_name` as `shapes_name` describes them; with `empty`, a (0, 0)
        shape stands for a missing image (None)."""
        shapes = _row(tensors, shapes_name, np.zeros(0, np.int32)).astype(np.int64)
        data = _row(tensors, data_name, np.zeros(0, np.uint8)).astype(np.uint8)
        if shapes.size % 2:
            raise TurnInputError(f"{shapes_name} must hold (h, w) pairs")
        pairs = shapes.reshape(-1, 2)
        sizes = [int(h * w * 3) for h, w in pairs]
        missing = [bool(empty and h == 0 and w == 0) for h, w in pairs]
        if sum(sizes) != data.size or any((h <= 0 or w <= 0) and not gap
                                          for (h, w), gap in zip(pairs, missing, strict=True)):
            raise TurnInputError(f"{data_name} holds {data.size} bytes, {shapes_name} describes {sum(sizes)}")
        views: list[npt.NDArray[np.uint8] | None] = []
        offset = 0
        for (h, w), size, gap in zip(pairs, sizes, missing, strict=True):
            views.append(None if gap else data[offset:offset + size].reshape(int(h), int(w), 3))
            offset += size
        return views


def _row(tensors: Tensors, name: str, default: Array | None = None) -> Array:
    """The request's own row of a batched tensor (Triton's leading dimension is 1)."""
    value = tensors.get(name)
    if value is None:
        if default is None:
            raise TurnInputError(f"missing input {name}")
        return default
    return value.reshape(-1) if value.ndim <= 1 else value[0].reshape(-1)


def _outputs(reply: TurnReply) -> dict[str, Array]:
    forced = reply.forced + [False] * (len(reply.tokens) - len(reply.forced))
    answer_prob = np.nan if reply.answer_prob is None else reply.answer_prob
    return {"GENERATED": np.asarray(reply.tokens, np.int64)[None],
            "LOGPROBS": np.asarray(reply.logprobs, np.float32)[None],
            "WATCH_LOGPROBS": np.ascontiguousarray(reply.watch, np.float32)[None],
            "FORCED": np.asarray(forced, np.bool_)[None],
            "ANSWER_PROB": np.asarray([answer_prob], np.float32)[None],
            "PROBE_BOXES": np.asarray(reply.probes, np.float64).reshape(1, -1),
            "PROBE_IMAGE": np.asarray([reply.probe_image], np.int32)[None]}
