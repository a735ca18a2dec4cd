"""`foveal bench serve`'s same-work reference: the in-process loop that also decodes the request's
encoded frames and encodes the evidence, so the service's overhead can be read against equal work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from foveal.model.loader import VLM, save
from foveal.reasoning.loop import Inspection
from foveal.reasoning.prompts import inspection_prompt
from foveal.serving import benchmark
from foveal.serving.images import InvalidInput
from foveal.v1 import inspection_pb2
from tests.conftest import embedded_settings
from tests.serving.helpers import frame, inline, png


def _requests(count: int) -> tuple[list[inspection_pb2.InspectRequest], list[Inspection]]:
    requests, inspections = [], []
    for i in range(count):
        pixels = frame(seed=i)
        request = inspection_pb2.InspectRequest(frame_id=f"f{i}", product="tile")
        request.image.CopyFrom(inline(png(pixels)))
        requests.append(request)
        inspections.append(Inspection([pixels], inspection_prompt(None, None, 1), item_id=f"f{i}"))
    return requests, inspections


def test_same_work_reference_times_every_request(tmp_path: Path, taught_vlm: VLM) -> None:
    save(taught_vlm, tmp_path / "model")
    settings = embedded_settings(tmp_path / "home", model_dir=tmp_path / "model")
    requests, inspections = _requests(4)
    level = benchmark.in_process_same_work(settings, requests, inspections)
    assert level.concurrency == 1 and len(level.latencies_ms) == 4
    assert all(ms > 0 for ms in level.latencies_ms) and level.seconds >= sum(level.latencies_ms) / 1000 * 0.99
    assert "from encoded bytes" in level.name


def test_same_work_reference_really_decodes(tmp_path: Path, taught_vlm: VLM) -> None:
    save(taught_vlm, tmp_path / "model")
    settings = embedded_settings(tmp_path / "home", model_dir=tmp_path / "model")
    requests, inspections = _requests(3)
    requests[2].image.inline = b"not a png"
    with pytest.raises(InvalidInput, match="not an image"):
        benchmark.in_process_same_work(settings, requests, inspections)


def test_same_threads_reference_computes_on_one_instances_threads_and_restores_them(
        tmp_path: Path, taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    save(taught_vlm, tmp_path / "model")
    settings = embedded_settings(tmp_path / "home", model_dir=tmp_path / "model")
    requests, inspections = _requests(3)
    seen: list[int] = []
    real = benchmark.read_frames

    def watched(*args: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(benchmark, "read_frames", watched)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        level = benchmark.in_process_same_work(settings, requests, inspections, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1] * (min(benchmark.WARM_UP, 3) + 3)  # warm-up and three timed calls, all on one thread
    assert len(level.latencies_ms) == 3 and "1 torch thread as one Triton instance" in level.name


def test_the_overhead_pools_every_round_of_both_sides() -> None:
    served = [benchmark.Level("service", 1, 1.0, [110.0, 130.0]), benchmark.Level("service", 1, 1.0, [90.0])]
    reference = [benchmark.Level("ref", 1, 1.0, [100.0]), benchmark.Level("ref", 1, 1.0, [100.0, 100.0])]
    # (110 + 130 + 90) / 3 = 110 against 100: 10 %, not the mean of the rounds' 20 % and -10 %
    assert benchmark.pooled_overhead_pct(served, reference) == 10.0
    assert benchmark.pooled_overhead_pct(served[:1], reference[:1]) == 20.0


def test_paired_timing_runs_every_item_through_both_sides_back_to_back_alternating_which_goes_first() -> None:
    seen: list[tuple[str, object]] = []

    def side(name: str, ms: float) -> object:
        def call(item: object) -> None:
            seen.append((name, item))
            time.sleep(ms / 1000)
        return call

    first, second = benchmark.timed_pairs(["a", "b", "c"], side("ref", 1), side("svc", 6), passes=2)
    assert seen == [("ref", "a"), ("svc", "a"), ("svc", "b"), ("ref", "b"), ("ref", "c"), ("svc", "c"),
                    ("svc", "a"), ("ref", "a"), ("ref", "b"), ("svc", "b"), ("svc", "c"), ("ref", "c")]
    assert len(first) == len(second) == 6
    assert all(s > f for f, s in zip(first, second, strict=True))  # item by item, in the same order
