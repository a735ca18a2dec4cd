"""A turn's large inputs (views, probe crops, the frame) handed to Triton through system shared
memory instead of inside the gRPC message.

Over gRPC a turn's pixels are copied into the request, serialised, sent and parsed: measured on
the 2-core host (session 28, `docs/serving.md`), a turn carrying 16 probe crops (5.4 MB) cost
27 ms more than an empty one, and 4.3 ms more through a shared-memory region. A region is a POSIX
shared-memory object the client writes and Triton maps once (`register_system_shared_memory`);
the request then names the region and the offset of each input.

It works when Triton runs on this machine (the embedded stack; a container that shares the
host's /dev/shm). Where Triton cannot map the region (another host), the first registration
fails and the engine sends bytes for the rest of its life.

`RegionPool` hands one region to each call in flight and takes it back when the call is over. A
call the client gave up on (deadline, lost connection) may still be queued in Triton, which
reads its inputs only when the model runs it, so its region is held back for `hold_s` before it
is used again. Regions are created on demand (no bigger than a call needs, in powers of two from
`min_bytes`), reserved with `posix_fallocate` so that a full /dev/shm is an error at creation
rather than a SIGBUS on write, and unregistered and removed by `close`.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

ALIGN = 64  # each input starts on a cache line


class RegionRefused(Exception):
    """The server would not map a region (the message says why)."""


@dataclass(eq=False)  # a region is itself: pools hold it in sets
class Region:
    name: str  # Triton's name of the region and the POSIX key without its "/"
    memory: shared_memory.SharedMemory
    size: int
    held_until: float = 0.0

    def write(self, arrays: Sequence[npt.NDArray[np.generic]]) -> list[tuple[int, int]]:
        """Copies `arrays` into the region, each at an aligned offset; their (offset, bytes)."""
        buffer = self.memory.buf
        assert buffer is not None, "the region is closed"
        out = []
        offset = 0
        for array in arrays:
            flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            np.frombuffer(buffer, np.uint8, flat.size, offset)[:] = flat
            out.append((offset, flat.size))
            offset += -(-flat.size // ALIGN) * ALIGN
        return out


def needed(arrays: Sequence[npt.NDArray[np.generic]]) -> int:
    return sum(-(-a.nbytes // ALIGN) * ALIGN for a in arrays)


class RegionPool:
    """`register(name, key, size)` asks the server to map a region (`RegionRefused` when it will
    not); `unregister(name)` tells it to let go (best effort: it never raises)."""

    def __init__(self, register: Callable[[str, str, int], None], unregister: Callable[[str], None],
                 min_bytes: int = 8 << 20, hold_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._register = register
        self._unregister = unregister
        self.min_bytes = min_bytes
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._free: list[Region] = []
        self._held: list[Region] = []
        self._busy: set[str] = set()
        self._prefix = f"foveal_{os.getpid()}_{secrets.token_hex(4)}"
        self._made = 0
        self.failed: str | None = None  # why shared memory is off, once it is

    @property
    def regions(self) -> int:
        with self._lock:
            return len(self._free) + len(self._held) + len(self._busy)

    def acquire(self, nbytes: int) -> Region | None:
        """A region of at least `nbytes` for one call; None when shared memory cannot be used
        (then the caller sends bytes)."""
        with self._lock:
            if self.failed is not None:
                return None
            now = self._clock()
            self._free += [r for r in self._held if r.held_until <= now]
            self._held = [r for r in self._held if r.held_until > now]
            fitting = sorted((r for r in self._free if r.size >= nbytes), key=lambda r: r.size)
            if fitting:
                region = fitting[0]
                self._free.remove(region)
                self._busy.add(region.name)
                return region
            # none fits: the smallest free one (if any) makes way for a bigger one
            retired = min(self._free, key=lambda r: r.size) if self._free else None
            if retired is not None:
                self._free.remove(retired)
            self._made += 1
            name = f"{self._prefix}_{self._made}"
        if retired is not None:
            self._destroy(retired)
        size = max(self.min_bytes, 1 << max(0, nbytes - 1).bit_length())
        made = self._create(name, size)
        if made is not None:
            with self._lock:
                self._busy.add(made.name)
        return made

    def release(self, region: Region, finished: bool) -> None:
        """Takes a region back; `finished` False: the call may still be queued in Triton."""
        with self._lock:
            self._busy.discard(region.name)
            if finished:
                self._free.append(region)
            else:
                region.held_until = self._clock() + self.hold_s
                self._held.append(region)

    def close(self) -> None:
        with self._lock:
            regions, self._free, self._held = self._free + self._held, [], []
        for region in regions:
            self._destroy(region)

    def _create(self, name: str, size: int) -> Region | None:
        try:
            memory = shared_memory.SharedMemory(name=name, create=True, size=size)
        except OSError as exc:
            log.warning("no shared memory region of %d bytes (%s): this call's images go as bytes", size, exc)
            return None
        try:
            os.posix_fallocate(memory._fd, 0, size)  # type: ignore[attr-defined]  # ENOSPC now, not SIGBUS later
        except OSError as exc:
            memory.close()
            memory.unlink()
            log.warning("shared memory has no room for %d bytes (%s): this call's images go as bytes",
                        size, exc)
            return None
        try:
            self._register(name, "/" + name, size)
        except RegionRefused as exc:  # the server cannot map it: another host, or shared memory off there
            memory.close()
            memory.unlink()
            with self._lock:
                self.failed = str(exc)
            log.warning("Triton cannot map this host's shared memory (%s): images go inside the gRPC "
                        "requests from now on", self.failed)
            return None
        return Region(name, memory, size)

    def _destroy(self, region: Region) -> None:
        self._unregister(region.name)
        try:
            region.memory.close()
        except BufferError:  # a view of it is still alive somewhere: the mapping goes with it
            log.debug("region %s still viewed at close", region.name)
        try:
            region.memory.unlink()
        except FileNotFoundError:
            pass
