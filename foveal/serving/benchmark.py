"""`foveal bench serve`: Inspect calls through the real reasoning service and the real
tritonserver, against the in-process loop on the same frames.

1. reference: the in-process loop (`LocalEngine`) at batch 1, one inspection after another, on
   frames decoded in advance; and the same loop doing the service's whole job (decode the
   encoded frames, run, build the result with its PNG evidence crops);
2. the reasoning service is started as its own process (`foveal serve reasoner`) against
   Triton, and each concurrency level sends every item once from that many client threads;
   Triton's `nv_inference_count / nv_inference_exec_count` over the level is its average batch;
3. the design check of the Triton interface: the same items through `TritonEngine` at
   concurrency 1 with the conversation kept on Triton versus re-sent and re-encoded every turn.

Figures: throughput, latency p50/p95/p99; `throughput_ratio_c16` = concurrency-16 throughput
over the sequential in-process batch-1 throughput; `overhead_pct` = the service's mean latency at
concurrency 1 over the in-process batch-1 mean, minus 1 (equal batching: none);
`overhead_same_work_pct` the same against the reference that also decodes and encodes, i.e. what
gRPC, Triton and the process boundary add; `overhead_same_threads_pct` the same again with the
reference on the torch threads of one Triton instance (config.pbtxt's "threads"), so that at
concurrency 1 both sides compute on the same thread budget and only the serving machinery differs.
Since session 28 that last figure is timed in pairs (`timed_pairs`: each item through the service
and the reference back to back, which goes first alternating), because the host's speed drifts
by a fifth within minutes; the blocks' figure is kept as `overhead_same_threads_blocks_pct`.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import grpc
import numpy as np

from foveal.evaluation.bench import inspection_of
from foveal.evaluation.inference import read_rgb
from foveal.model.loader import load
from foveal.plant.dataset import Label, read_labels
from foveal.reasoning.engine import LocalEngine
from foveal.reasoning.loop import Inspection, Loop
from foveal.rpc.convert import FrameGeometry, Timing, inspect_result
from foveal.serving.images import read_frames
from foveal.serving.process import ReasonerProcess
from foveal.serving.service import service_loop_options
from foveal.serving.triton_engine import connect
from foveal.settings import Settings
from foveal.v1 import frame_pb2, inspection_pb2, reasoner_pb2_grpc

# untimed inspections before each path is timed. With two, the service's first pass over 48 items
# was 40 ms per inspection slower than a second pass right after it (session 19; not isolated:
# Triton runs two model instances, each warming its own buffers, and two requests may not reach
# both), so eight, for the in-process references too
WARM_UP = 8
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


@dataclass
class Level:
    name: str
    concurrency: int
    seconds: float
    latencies_ms: list[float]
    avg_batch: float | None = None

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def row(self) -> dict[str, object]:
        lat = np.asarray(self.latencies_ms)
        return {"name": self.name, "concurrency": self.concurrency, "items": len(lat),
                "throughput_per_s": round(self.throughput, 3), "mean_ms": round(float(lat.mean()), 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p95_ms": round(float(np.percentile(lat, 95)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "triton_avg_batch": None if self.avg_batch is None else round(self.avg_batch, 2)}


def pick(folder: Path, n: int) -> list[Label]:
    """`n` items in FovealBench's own mix: one sequence for every five frames."""
    labels = list(read_labels(folder))
    images = [label for label in labels if label.image]
    sequences = [label for label in labels if not label.image]
    n_seq = min(len(sequences), n // 6)
    return images[:n - n_seq] + sequences[:n_seq]


def request_of(label: Label, folder: Path) -> inspection_pb2.InspectRequest:
    def encoded(rel: str) -> frame_pb2.Image:
        ok, png = cv2.imencode(".png", cv2.cvtColor(read_rgb(folder / rel), cv2.COLOR_RGB2BGR))
        assert ok
        return frame_pb2.Image(mime_type="image/png", inline=png.tobytes())

    request = inspection_pb2.InspectRequest(frame_id=label.id, product=label.product)
    if label.image:
        request.image.CopyFrom(encoded(label.image))
    else:
        request.sequence.extend(encoded(rel) for rel in label.frames or [])
    return request


def pooled_overhead_pct(served: Sequence[Level], reference: Sequence[Level]) -> float:
    """The served path's mean latency over the reference's, minus 1, in percent, each pooled over
    its rounds (the same items timed again, the two paths alternating so that a drift of the
    host's speed falls on both)."""
    mean_served = float(np.mean([x for level in served for x in level.latencies_ms]))
    mean_reference = float(np.mean([x for level in reference for x in level.latencies_ms]))
    return round((mean_served / mean_reference - 1) * 100, 1)


def timed_each(items: Sequence[object], call: Callable[[object], object],
               concurrency: int) -> tuple[float, list[float]]:
    def one(item: object) -> float:
        began = time.perf_counter()
        call(item)
        return (time.perf_counter() - began) * 1000

    began = time.perf_counter()
    if concurrency == 1:
        latencies = [one(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            latencies = list(pool.map(one, items))
    return time.perf_counter() - began, latencies


def triton_counts(settings: Settings, model: str) -> tuple[float, float]:
    url = f"http://{settings.bind_host}:{settings.triton_metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    totals = {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in totals and f'model="{model}"' in line:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["nv_inference_count"], totals["nv_inference_exec_count"]


def served_parameters(settings: Settings) -> dict[str, str]:
    """The served model's config.pbtxt parameters, as Triton reports them."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(settings.triton_address)
    try:
        config = client.get_model_config(settings.triton_model, as_json=True)["config"]
    finally:
        client.close()
    return {key: str(value.get("string_value", "")) for key, value in config.get("parameters", {}).items()}


def served_vision(settings: Settings) -> str:
    """The vision backend the served model is configured with ("torch" or "onnx")."""
    return served_parameters(settings).get("vision") or "torch"


def served_tower_precision(settings: Settings) -> str:
    """What the served compact tower runs its reranked looks in (config.pbtxt's "tower_precision")."""
    return served_parameters(settings).get("tower_precision") or "auto"


def served_threads(settings: Settings) -> int:
    """torch threads of one served instance (config.pbtxt's "threads"; 0: torch's default)."""
    return int(served_parameters(settings).get("threads") or 0)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` (0: unchanged) for the block, restored after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_loop(settings: Settings, vision: str = "torch", tower_precision: str = "auto") -> Loop:
    """The in-process loop on the same model as Triton's, with the vision backend and tower
    precision it is configured with (`served_vision`, `served_tower_precision`)."""
    vlm = load(settings.model_dir, tower_precision=tower_precision)
    features = None
    if vision == "onnx":
        import tempfile

        from foveal.serving.onnx_vision import OnnxVision, export

        features = OnnxVision(export(vlm, Path(tempfile.mkdtemp()) / "vision.onnx"), vlm)
    return Loop(LocalEngine(vlm, vision=features), service_loop_options(settings))


def in_process(settings: Settings, inspections: Sequence[Inspection], vision: str = "torch",
               tower_precision: str = "auto") -> Level:
    """The reference: the same model and vision backend as Triton's, in this process, batch 1."""
    loop = reference_loop(settings, vision, tower_precision)
    for item in inspections[:WARM_UP]:
        loop.run([item])  # warm-up, at batch 1 like the timed runs
    seconds, latencies = timed_each(inspections, lambda item: loop.run([item]), 1)  # type: ignore[list-item]
    return Level(f"in-process loop, batch 1 ({vision})", 1, seconds, latencies)


def same_work(loop: Loop, inspections: Sequence[Inspection]
              ) -> Callable[[inspection_pb2.InspectRequest], inspection_pb2.InspectResult]:
    """The service's whole job for one request, in process: decode the request's encoded frames
    (`read_frames`, with its checks), run the loop, build the `InspectResult` with its
    PNG-encoded evidence crops."""
    prompts = {item.item_id: item for item in inspections}

    def one(request: inspection_pb2.InspectRequest) -> inspection_pb2.InspectResult:
        frames = read_frames(request.image if request.HasField("image") else None, request.sequence)
        known = prompts[request.frame_id]
        trace = loop.run([Inspection(frames, known.prompt, known.taxonomy, request.frame_id)])[0]
        return inspect_result(request.frame_id, trace, FrameGeometry.of(frames), Timing(0.0, 0.0))

    return one


def in_process_same_work(settings: Settings, requests: Sequence[inspection_pb2.InspectRequest],
                         inspections: Sequence[Inspection], vision: str = "torch", threads: int = 0,
                         tower_precision: str = "auto") -> Level:
    """The in-process loop doing the service's whole job at batch 1 (`same_work`). Against this,
    what the service adds is gRPC, Triton and the process boundary; against `in_process` (frames
    decoded outside the timing) it also pays the decoding and encoding."""
    one = same_work(reference_loop(settings, vision, tower_precision), inspections)
    with torch_threads(threads):
        for request in requests[:WARM_UP]:
            one(request)  # warm-up
        seconds, latencies = timed_each(requests, one, 1)  # type: ignore[arg-type]
    on = f", {threads} torch thread{'s' if threads > 1 else ''} as one Triton instance" if threads else ""
    return Level(f"in-process loop, batch 1, from encoded bytes ({vision}{on})", 1, seconds, latencies)


def timed_pairs(items: Sequence[object], first: Callable[[object], object],
                second: Callable[[object], object], passes: int) -> tuple[list[float], list[float]]:
    """Each item through both calls back to back, `passes` times over the items, the call that
    goes first alternating from item to item (and from pass to pass): a drift of the host's
    speed falls on both sides of every item. The two calls' latencies in ms, item by item."""
    times: tuple[list[float], list[float]] = ([], [])
    calls = (first, second)
    for done in range(passes):
        for k, item in enumerate(items):
            for side in ((0, 1) if (k + done) % 2 == 0 else (1, 0)):
                began = time.perf_counter()
                calls[side](item)
                times[side].append((time.perf_counter() - began) * 1000)
    return times


def paired_overhead(settings: Settings, service: ReasonerProcess,
                    requests: Sequence[inspection_pb2.InspectRequest], inspections: Sequence[Inspection],
                    vision: str, threads: int, passes: int, tower_precision: str = "auto"
                    ) -> tuple[Level, Level]:
    """The service at concurrency 1 against the same work in process on one Triton instance's
    threads, timed in pairs (`timed_pairs`): (reference, service)."""
    one = same_work(reference_loop(settings, vision, tower_precision), inspections)
    with grpc.insecure_channel(service.address, options=CHANNEL_OPTIONS) as channel, torch_threads(threads):
        stub = reasoner_pb2_grpc.ReasonerStub(channel)  # type: ignore[no-untyped-call]
        for request in requests[:WARM_UP]:
            one(request)
        reference, served = timed_pairs(requests, one, lambda r: stub.Inspect(r, timeout=300),  # type: ignore[arg-type]
                                        passes)
    on = f"{threads} torch thread{'s' if threads > 1 else ''}" if threads else "torch's threads"
    return (Level(f"paired: in-process loop from encoded bytes ({vision}, {on})", 1, sum(reference) / 1000,
                  reference),
            Level("paired: service, concurrency 1", 1, sum(served) / 1000, served))


def through_service(settings: Settings, service: ReasonerProcess,
                    requests: Sequence[inspection_pb2.InspectRequest], levels: Sequence[int],
                    model: str) -> list[Level]:
    out = []
    with grpc.insecure_channel(service.address, options=CHANNEL_OPTIONS) as channel:
        stub = reasoner_pb2_grpc.ReasonerStub(channel)  # type: ignore[no-untyped-call]
        for request in requests[:WARM_UP]:
            stub.Inspect(request, timeout=120)  # warm-up: every Triton instance, every buffer size
        for concurrency in levels:
            before = triton_counts(settings, model)
            seconds, latencies = timed_each(requests, lambda r: stub.Inspect(r, timeout=300), concurrency)
            after = triton_counts(settings, model)
            executions = after[1] - before[1]
            out.append(Level(f"service, concurrency {concurrency}", concurrency, seconds, latencies,
                             (after[0] - before[0]) / executions if executions else None))
    return out


def kept_versus_resent(settings: Settings, inspections: Sequence[Inspection]) -> list[Level]:
    engine = connect(settings)
    out = []
    try:
        for name, reuse in (("triton, conversation kept", True), ("triton, re-sent every turn", False)):
            loop = Loop(engine, replace(service_loop_options(settings), reuse_cache=reuse))
            seconds, latencies = timed_each(inspections, lambda item, lp=loop: lp.run([item]), 1)  # type: ignore[misc]
            out.append(Level(name, 1, seconds, latencies))
    finally:
        engine.close()
    return out


def inspections_of(labels: Sequence[Label], folder: Path) -> list[Inspection]:
    return [inspection_of(label, folder, named_prompt=True) for label in labels]


def vision_speed(settings: Settings, inspections: Sequence[Inspection], repeats: int = 3) -> dict[str, float]:
    """Mean ms per whole-frame view through the vision encoder: torch tower vs onnxruntime."""
    import tempfile

    import torch

    from foveal.operations import Workspace
    from foveal.serving.onnx_vision import OnnxVision, export

    vlm = load(settings.model_dir)
    onnx = OnnxVision(export(vlm, Path(tempfile.mkdtemp()) / "vision.onnx"), vlm)
    chunks = [vlm.chat.image(Workspace(item.frames, vlm.budget).views[0].pixels) for item in inspections]
    inputs = [(torch.from_numpy(c.patches[0]), torch.tensor(c.grids)) for c in chunks]

    def torch_tower(pixels: torch.Tensor, grids: torch.Tensor) -> object:
        with torch.inference_mode():
            return vlm.model.model.get_image_features(pixels, grids)

    out: dict[str, float] = {}
    worst = 0.0
    for name, encode in (("torch", torch_tower), ("onnxruntime", onnx)):
        encode(*inputs[0])  # warm-up
        began = time.perf_counter()
        for _ in range(repeats):
            for pixels, grids in inputs:
                encode(pixels, grids)
        out[f"vision_{name}_ms"] = round((time.perf_counter() - began) * 1000 / (repeats * len(inputs)), 2)
    for pixels, grids in inputs:
        expected = torch.cat(list(torch_tower(pixels, grids).pooler_output))  # type: ignore[attr-defined]
        worst = max(worst, float((onnx(pixels, grids) - expected).abs().max()))
    out["vision_max_abs_diff"] = worst
    return out
