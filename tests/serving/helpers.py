"""Shared pieces of the serving tests: requests built from synthetic frames, crafted PNG headers,
and `ControlledEngine`, a fake of a model server's *state* (ready or not, failing, slow, or
answering the first turn with a scripted zoom) wrapped around a real in-process `LocalEngine`."""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from foveal.reasoning.engine import EngineUnavailable, LocalEngine, ModelRef, TurnReply, TurnRequest
from foveal.v1 import frame_pb2, inspection_pb2

FRAME_ID = "0b9f6a3e-5c1d-4e2f-9a7b-3c4d5e6f7a8b"
CROP_CALL = ('A mark. <tool_call>{"name": "crop_image_normalized", "arguments": '
             '{"bbox_2d": [0.2, 0.2, 0.6, 0.6], "target_image": 1}}')


def frame(seed: int = 0, height: int = 240, width: int = 320) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


def inline(data: bytes) -> frame_pb2.Image:
    return frame_pb2.Image(mime_type="image/png", inline=data)


def request(image: frame_pb2.Image | None = None, sequence: Sequence[frame_pb2.Image] = (),
            **fields: object) -> inspection_pb2.InspectRequest:
    msg = inspection_pb2.InspectRequest(frame_id=FRAME_ID, sequence=list(sequence), **fields)  # type: ignore[arg-type]
    if image is not None:
        msg.image.CopyFrom(image)
    elif not sequence:
        msg.image.CopyFrom(inline(png(frame())))
    return msg


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims `width` x `height` (its pixel data is empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


class ControlledEngine:
    """A `LocalEngine` behind switches that play the model server's state."""

    def __init__(self, inner: LocalEngine) -> None:
        self.inner = inner
        self.chat = inner.chat
        self.budget = inner.budget
        self.reset()

    def reset(self) -> None:
        self.up = True  # ready() and turns() succeed
        self.probe_error: Exception | None = None  # ready() raises this (a probe without an answer)
        self.fail: Exception | None = None  # turns() raises this
        self.delay_s = 0.0  # turns() sleeps first (a slow model)
        self.gate: threading.Event | None = None  # turns() waits for it (a stuck model)
        self.entered = threading.Event()  # set when a turn begins
        self.zoom = False  # the first turn of each session is a scripted crop tool call
        self._zoomed: set[int] = set()

    @property
    def model(self) -> ModelRef:
        return self.inner.model

    def ready(self, timeout_s: float = 1.0) -> bool:
        if self.probe_error is not None:
            raise self.probe_error
        return self.up

    def release(self, sessions: Iterable[int]) -> None:
        self.inner.release(sessions)

    def turns(self, requests: Sequence[TurnRequest], timeout_s: float | None = None) -> list[TurnReply]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if not self.up:
            raise EngineUnavailable("the model server is down (test)")
        if self.fail is not None:
            raise self.fail
        return [self._zoom_turn(r) if self._scripted(r) else self.inner.turns([r])[0] for r in requests]

    def _scripted(self, r: TurnRequest) -> bool:
        return self.zoom and r.max_new_tokens > 0 and r.session not in self._zoomed

    def _zoom_turn(self, r: TurnRequest) -> TurnReply:
        """Append the chunk for real, then answer with the crop call as if the model wrote it."""
        self._zoomed.add(r.session)
        [reply] = self.inner.turns([dataclasses.replace(r, max_new_tokens=0)])
        tokens = [*self.chat.tokenizer.encode(CROP_CALL, add_special_tokens=False), self.chat.tool_close]
        reply.tokens, reply.logprobs = tokens, [0.0] * len(tokens)
        reply.watch = np.zeros((len(tokens), len(r.watch)), np.float32)
        return reply
