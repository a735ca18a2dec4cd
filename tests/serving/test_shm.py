"""The pool of shared-memory regions the Triton engine hands its large inputs through: regions
are reused, grown, held back after a call the client gave up on, and removed; a server that
refuses them turns shared memory off for good, leaving nothing behind."""

from __future__ import annotations

from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from foveal.serving.shm import ALIGN, RegionPool, RegionRefused, needed


class Server:
    """What the pool asks of Triton, kept in a dict: the names mapped and their sizes."""

    def __init__(self, refuse: bool = False) -> None:
        self.mapped: dict[str, int] = {}
        self.refuse = refuse
        self.calls = 0

    def register(self, name: str, key: str, size: int) -> None:
        self.calls += 1
        if self.refuse:
            raise RegionRefused("Unable to open shared memory region")
        assert key == "/" + name
        shared_memory.SharedMemory(name=name).close()  # it exists, as the server would check
        self.mapped[name] = size

    def unregister(self, name: str) -> None:
        self.mapped.pop(name, None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def on_disk(name: str) -> bool:
    return Path("/dev/shm", name).exists()


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def pool(server: Server) -> RegionPool:
    made = RegionPool(server.register, server.unregister, min_bytes=1 << 20, hold_s=60.0, clock=Clock())
    yield made  # type: ignore[misc]
    made.close()


def test_a_region_is_reused_once_its_call_is_over(pool: RegionPool, server: Server) -> None:
    first = pool.acquire(300_000)
    assert first is not None and first.size == 1 << 20 and server.mapped == {first.name: 1 << 20}
    pool.release(first, finished=True)
    again = pool.acquire(900_000)
    assert again is first and server.calls == 1


def test_calls_in_flight_together_get_regions_of_their_own(pool: RegionPool, server: Server) -> None:
    a, b = pool.acquire(1000), pool.acquire(1000)
    assert a is not None and b is not None and a.name != b.name
    assert len(server.mapped) == 2 and pool.regions == 2


def test_a_call_given_up_on_holds_its_region_back_until_the_hold_has_passed(server: Server) -> None:
    clock = Clock()
    pool = RegionPool(server.register, server.unregister, min_bytes=1 << 20, hold_s=60.0, clock=clock)
    try:
        first = pool.acquire(1000)
        assert first is not None
        pool.release(first, finished=False)  # Triton may still read it when the queued call runs
        second = pool.acquire(1000)
        assert second is not None and second is not first
        pool.release(second, finished=True)
        clock.now += 61
        reused = {pool.acquire(1000), pool.acquire(1000)}
        assert reused == {first, second}
    finally:
        pool.close()


def test_a_call_larger_than_every_free_region_gets_a_larger_one_and_the_small_one_goes(
        pool: RegionPool, server: Server) -> None:
    small = pool.acquire(1000)
    assert small is not None
    pool.release(small, finished=True)
    large = pool.acquire(3_000_000)
    assert large is not None and large.size == 4 << 20
    assert set(server.mapped) == {large.name}
    assert not on_disk(small.name) and on_disk(large.name)


def test_a_refused_region_turns_shared_memory_off_and_leaves_nothing_behind() -> None:
    server = Server(refuse=True)
    pool = RegionPool(server.register, server.unregister, min_bytes=1 << 20)
    assert pool.acquire(1000) is None
    assert pool.failed == "Unable to open shared memory region"
    assert pool.acquire(1000) is None and server.calls == 1  # not asked again
    assert pool.regions == 0
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(pool._prefix)]


def test_close_unregisters_and_removes_every_region(server: Server) -> None:
    pool = RegionPool(server.register, server.unregister, min_bytes=1 << 20)
    regions = [pool.acquire(1000), pool.acquire(1000)]
    for region in regions:
        assert region is not None
        pool.release(region, finished=region is regions[0])
    pool.close()
    assert server.mapped == {}
    assert not any(on_disk(r.name) for r in regions if r is not None)


def test_arrays_are_written_at_aligned_offsets_and_read_back_whole(pool: RegionPool) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (37, 41, 3), dtype=np.uint8),
              rng.integers(-5, 5, 99).astype(np.int64), rng.integers(0, 256, 5, dtype=np.uint8)]
    region = pool.acquire(needed(arrays))
    assert region is not None
    places = region.write(arrays)
    for (offset, size), array in zip(places, arrays, strict=True):
        assert offset % ALIGN == 0 and size == array.nbytes
        back = np.frombuffer(region.memory.buf, array.dtype, array.size, offset).reshape(array.shape)
        assert np.array_equal(back, array)
        del back  # a view into the region would keep it from closing
    assert places[-1][0] + places[-1][1] <= needed(arrays)


def test_a_region_whose_write_failed_goes_back_to_the_pool(
        server: Server, pool: RegionPool, monkeypatch: pytest.MonkeyPatch) -> None:
    from foveal.operations import ImageBudget
    from foveal.serving.shm import Region
    from foveal.serving.triton_engine import TritonEngine

    engine = TritonEngine("127.0.0.1:9", "foveal_vl", None, ImageBudget())  # type: ignore[arg-type]
    engine.regions = pool

    def broken(self: Region, arrays: object) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(Region, "write", broken)
    try:
        with pytest.raises(MemoryError):
            engine._placed([("IMAGES", np.zeros(1 << 20, np.uint8), "UINT8")])
    finally:
        engine.client.close()
    assert pool._busy == set() and len(pool._free) == 1  # free again, not lost
