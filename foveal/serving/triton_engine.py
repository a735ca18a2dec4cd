"""An `Engine` whose turns run on Triton: the reasoning service's view of the model.

Each inspection is one Triton sequence (a random 63-bit correlation id): its first turn starts
the sequence, a forced answer or `release` ends it, and the model keeps the conversation's cache
in between (`foveal/serving/model_host.py`). Concurrent inspections from many threads are
batched by Triton's sequence batcher. Errors: unreachable server or model not ready →
`EngineUnavailable`; deadline → `DeadlineExceeded`; anything else the server rejects →
`EngineError`. A turn's pixels go through system shared memory where Triton can map it
(`foveal/serving/shm.py`), else inside the request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from foveal.model.chat import ChatFormat
from foveal.model.loader import load_chat
from foveal.operations import ImageBudget
from foveal.reasoning.engine import EngineError, EngineUnavailable, ModelRef, TurnReply, TurnRequest
from foveal.reasoning.loop import DeadlineExceeded
from foveal.serving.shm import Region, RegionPool, RegionRefused, needed
from foveal.settings import Settings

_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND", "StatusCode.CANCELLED")
SHARED_MIN_BYTES = 64 << 10  # smaller inputs travel inside the request


class TritonEngine:
    def __init__(self, url: str, model_name: str, chat: ChatFormat, budget: ImageBudget,
                 model_version: str = "", shared_memory: bool = True) -> None:
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.chat = chat
        self.budget = budget
        self.client = triton_grpc.InferenceServerClient(url)
        self._started: set[int] = set()
        self._lock = threading.Lock()
        self._last = ModelRef(model_name, model_version or "?")
        self.regions = RegionPool(self._register, self._unregister) \
            if shared_memory else None

    @property
    def model(self) -> ModelRef:
        return self._last

    def ready(self, timeout_s: float = 1.0) -> bool:
        """Triton's answer whether the model is ready; `EngineUnavailable` when no answer came
        (unreachable, or slower than `timeout_s`: a server busy with large requests can be)."""
        try:
            return bool(self.client.is_model_ready(self.model_name, self.model_version,
                                                   client_timeout=timeout_s))
        except InferenceServerException as exc:
            message = (exc.message() or str(exc)).splitlines()[0]
            raise EngineUnavailable(
                f"Triton at {self.url} did not answer a readiness probe: {message}") from exc

    def turns(self, requests: Sequence[TurnRequest], timeout_s: float | None = None) -> list[TurnReply]:
        if len(requests) == 1:
            return [self._turn(requests[0], timeout_s)]
        with ThreadPoolExecutor(max_workers=min(32, len(requests))) as pool:
            return list(pool.map(lambda r: self._turn(r, timeout_s), requests))

    def release(self, sessions: Iterable[int]) -> None:
        """End sequences still open on the server, without waiting for the answers: an inspection
        that ended on its own answer is over, and its result should not wait one more round
        trip (best effort: the server also evicts idle sequences)."""
        for session in sessions:
            with self._lock:
                if session not in self._started:
                    continue
                self._started.discard(session)
            try:
                self.client.async_infer(
                    self.model_name, _inputs(np.zeros(0, np.int64), [], 0, (), (), 0.0, False, 1, ()),
                    _ignore, model_version=self.model_version, sequence_id=session,
                    sequence_start=False, sequence_end=True, client_timeout=5.0)
            except InferenceServerException:
                pass

    def close(self) -> None:
        if self.regions is not None:
            self.regions.close()
        self.client.close()

    def _register(self, name: str, key: str, size: int) -> None:
        try:
            self.client.register_system_shared_memory(name, key, size, client_timeout=5.0)
        except InferenceServerException as exc:
            raise RegionRefused((exc.message() or str(exc)).splitlines()[0]) from exc

    def _unregister(self, name: str) -> None:
        try:
            self.client.unregister_system_shared_memory(name, client_timeout=5.0)
        except InferenceServerException:  # the server is gone, and its mapping with it
            pass

    def _turn(self, r: TurnRequest, timeout_s: float | None) -> TurnReply:
        with self._lock:
            start = r.session not in self._started
            if r.end:
                self._started.discard(r.session)
            else:
                self._started.add(r.session)
        arrays = _arrays(np.asarray(r.chunk.ids, np.int64), r.chunk.images, r.max_new_tokens,
                         sorted(r.stop_ids), r.watch, r.temperature, r.restart, r.frames, r.probes,
                         r.operations, r.source, r.regions)
        inputs, region = self._placed(arrays)
        finished = False
        try:
            result, ms = self._infer(inputs, r.session, start=start, end=r.end, timeout_s=timeout_s)
            finished = True
        except EngineError:  # the server answered (not a deadline, not unreachable): inputs read
            finished = True
            raise
        finally:
            if region is not None and self.regions is not None:
                self.regions.release(region, finished)
        tokens = result.as_numpy("GENERATED")
        logprobs = result.as_numpy("LOGPROBS")
        watch = result.as_numpy("WATCH_LOGPROBS")
        if tokens is None or logprobs is None or watch is None:
            raise EngineError(f"{self.model_name} answered without its outputs")
        answered = result.get_response()
        self._last = ModelRef(answered.model_name, answered.model_version)
        forced = result.as_numpy("FORCED")  # absent from a model repository older than session 10
        answer_prob = result.as_numpy("ANSWER_PROB")
        prob = None if answer_prob is None or np.isnan(answer_prob[0][0]) else float(answer_prob[0][0])
        probe_boxes = result.as_numpy("PROBE_BOXES")  # absent before session 11
        probe_image = result.as_numpy("PROBE_IMAGE")
        probes = [] if probe_boxes is None else [
            (float(a), float(b), float(c), float(d)) for a, b, c, d in probe_boxes[0].reshape(-1, 4)]
        return TurnReply(tokens=[int(t) for t in tokens[0]], logprobs=[float(x) for x in logprobs[0]],
                         forced=[] if forced is None or not forced[0].any() else [bool(f) for f in forced[0]],
                         answer_prob=prob, probes=probes,
                         probe_image=0 if probe_image is None else int(probe_image[0][0]),
                         watch=np.asarray(watch[0], np.float32), model_ms=ms,
                         model=self._last)

    def _placed(self, arrays: list[tuple[str, npt.NDArray[np.generic], str]]
                ) -> tuple[list[triton_grpc.InferInput], Region | None]:
        """The turn's input tensors, the large ones in a shared-memory region when there is one."""
        large = [value for _, value, _ in arrays if value.nbytes >= SHARED_MIN_BYTES]
        region = self.regions.acquire(needed(large)) if large and self.regions is not None else None
        try:
            places = iter(region.write(large) if region is not None else ())
        except BaseException:
            if region is not None and self.regions is not None:
                self.regions.release(region, finished=True)  # nothing was sent
            raise
        inputs = []
        for name, value, dtype in arrays:
            tensor = triton_grpc.InferInput(name, [1, *value.shape], dtype)
            if region is not None and value.nbytes >= SHARED_MIN_BYTES:
                offset, size = next(places)
                tensor.set_shared_memory(region.name, size, offset)
            else:
                tensor.set_data_from_numpy(value[None])
            inputs.append(tensor)
        return inputs, region

    def _infer(self, inputs: list[triton_grpc.InferInput], session: int, *, start: bool, end: bool,
               timeout_s: float | None) -> tuple[triton_grpc.InferResult, float]:
        began = time.perf_counter()
        try:
            result = self.client.infer(self.model_name, inputs, model_version=self.model_version,
                                       sequence_id=session, sequence_start=start, sequence_end=end,
                                       client_timeout=timeout_s)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            message = (exc.message() or str(exc)).splitlines()[0]
            if status == "StatusCode.DEADLINE_EXCEEDED" or "Deadline" in message:
                raise DeadlineExceeded(f"the model did not answer in time: {message}") from exc
            if status in _UNAVAILABLE or "unknown model" in message or "not ready" in message:
                raise EngineUnavailable(f"Triton at {self.url}, model {self.model_name}: {message}") from exc
            raise EngineError(f"Triton at {self.url}, model {self.model_name}: {message}") from exc
        if result is None:
            raise EngineError(f"{self.model_name} returned no result")
        return result, (time.perf_counter() - began) * 1000


def _ignore(result: object, error: object) -> None:
    """The callback of a release: nothing waits for it, and a failed one changes nothing."""


def _inputs(ids: npt.NDArray[np.int64], images: Sequence[npt.NDArray[np.uint8]], max_new: int,
            stop_ids: Sequence[int], watch: Sequence[int], temperature: float,
            restart: bool, frames: int, probes: Sequence[npt.NDArray[np.uint8] | None],
            operations: bool = True, source: npt.NDArray[np.uint8] | None = None,
            regions: Sequence[tuple[int, int, int, int] | None] = ()
            ) -> list[triton_grpc.InferInput]:
    inputs = []
    for name, value, dtype in _arrays(ids, images, max_new, stop_ids, watch, temperature, restart,
                                      frames, probes, operations, source, regions):
        tensor = triton_grpc.InferInput(name, [1, *value.shape], dtype)
        tensor.set_data_from_numpy(value[None])
        inputs.append(tensor)
    return inputs


def _arrays(ids: npt.NDArray[np.int64], images: Sequence[npt.NDArray[np.uint8]], max_new: int,
            stop_ids: Sequence[int], watch: Sequence[int], temperature: float,
            restart: bool, frames: int, probes: Sequence[npt.NDArray[np.uint8] | None],
            operations: bool = True, source: npt.NDArray[np.uint8] | None = None,
            regions: Sequence[tuple[int, int, int, int] | None] = ()
            ) -> list[tuple[str, npt.NDArray[np.generic], str]]:
    """A turn's input tensors (name, value without Triton's batch dimension, Triton dtype)."""
    shapes, pixels = _packed(images)
    arrays: list[tuple[str, npt.NDArray[np.generic], str]] = [
        ("TOKENS", ids, "INT64"),
        ("IMAGES", pixels, "UINT8"),
        ("IMAGE_SHAPES", shapes, "INT32"),
        ("MAX_NEW_TOKENS", np.asarray([max_new], np.int32), "INT32"),
        ("STOP_IDS", np.asarray(stop_ids, np.int64), "INT64"),
        ("WATCH", np.asarray(watch, np.int64), "INT64"),
        ("TEMPERATURE", np.asarray([temperature], np.float32), "FP32"),
        ("RESTART", np.asarray([restart], bool), "BOOL"),
        ("FRAMES", np.asarray([frames], np.int32), "INT32"),
    ]
    if probes:
        probe_shapes, probe_pixels = _packed(probes)
        arrays += [("PROBES", probe_pixels, "UINT8"), ("PROBE_SHAPES", probe_shapes, "INT32")]
    if not operations:  # optional: the model reads its absence as operations allowed
        arrays.append(("OPERATIONS", np.asarray([False]), "BOOL"))
    if source is not None:  # once per inspection: the model cuts the pointer's probes from it
        shape, pixels = _packed([source])
        arrays += [("SOURCE", pixels, "UINT8"), ("SOURCE_SHAPE", shape, "INT32")]
    if regions:
        arrays.append(("REGIONS", np.asarray([v for region in regions for v in (region or (-1, -1, -1, -1))],
                                             np.int32), "INT32"))
    return arrays


def _packed(images: Sequence[npt.NDArray[np.uint8] | None]
            ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    """(h, w) per image ((0, 0) for a missing one) and all their pixels in one flat array."""
    shapes = np.asarray([s for view in images for s in (view.shape[:2] if view is not None else (0, 0))],
                        np.int32)
    present = [view.reshape(-1) for view in images if view is not None]
    pixels = np.concatenate(present) if present else np.zeros(0, np.uint8)
    return shapes, pixels.astype(np.uint8, copy=False)


def connect(settings: Settings) -> TritonEngine:
    """The engine for the configured Triton and model; the tokenizer and pixel settings come from
    the model directory (`FOVEAL_MODEL_DIR`), which must be the one Triton serves."""
    chat, budget = load_chat(settings.model_dir)
    return TritonEngine(settings.triton_address, settings.triton_model, chat, budget,
                        shared_memory=settings.triton_shared_memory)
