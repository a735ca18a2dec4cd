"""The reasoning model on a real tritonserver: the loop run through Triton lives exactly the
conversation it lives in process, concurrent inspections are batched by Triton, an unloaded model
is `EngineUnavailable`, a deadline is `DeadlineExceeded`; and the host behind `model.py` rejects
a malformed request alone and runs torch on the threads it is given."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc

from foveal.model.chat import ChatFormat
from foveal.model.loader import VLM, save
from foveal.operations import Workspace
from foveal.reasoning.engine import EngineError, EngineUnavailable, LocalEngine, TurnReply, TurnRequest
from foveal.reasoning.loop import DeadlineExceeded, Inspection, Loop, LoopOptions, Trace
from foveal.reasoning.pointer import ZOOM_SENTENCE
from foveal.serving import triton_engine as triton_engine_module
from foveal.serving.model_host import Control, ModelHost
from foveal.serving.triton_engine import TritonEngine, _arrays, _inputs
from foveal.stack import Stack
from tests.reasoning.protocol_model import SCRIPTS, frames_for

pytestmark = pytest.mark.slow
OPTIONS = LoopOptions(max_turn_tokens=48)


def item(name: str) -> Inspection:
    prompt, n, _ = SCRIPTS[name]
    return Inspection(frames_for(name, n), prompt, item_id=name)


def run(engine: object, name: str) -> Trace:
    return Loop(engine, OPTIONS).run([item(name)])[0]  # type: ignore[arg-type]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-memory", "bytes"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_triton_lives_the_same_conversation_as_the_in_process_loop(
        name: str, shared: bool, triton: Stack, taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # every input through the regions, tokens too (the micro model's views are under the threshold)
    monkeypatch.setattr(triton_engine_module, "SHARED_MIN_BYTES", 0)
    engine = TritonEngine(triton.settings.triton_address, "foveal_vl", taught_vlm.chat, taught_vlm.budget,
                          shared_memory=shared)
    try:
        remote, local = run(engine, name), run(taught_vlm, name)
        mapped = _shared_regions(triton)
        if shared:
            assert engine.regions is not None and engine.regions.failed is None
            assert engine.regions.regions >= 1 and mapped >= {r.name for r in engine.regions._free}
        else:
            assert engine.regions is None
    finally:
        engine.close()
    assert remote.conversation.ids == local.conversation.ids
    assert remote.operations == local.operations >= 1
    assert remote.defect_type == local.defect_type
    assert remote.confidence == pytest.approx(local.confidence, abs=1e-4)
    assert remote.model is not None and (remote.model.name, remote.model.version) == ("foveal_vl", "1")
    assert not {n for n in _shared_regions(triton) if n.startswith(f"foveal_{os.getpid()}_")}  # let go


def test_where_triton_cannot_map_the_regions_the_images_go_as_bytes(
        triton: Stack, taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_engine_module, "SHARED_MIN_BYTES", 0)
    engine = TritonEngine(triton.settings.triton_address, "foveal_vl", taught_vlm.chat, taught_vlm.budget)
    assert engine.regions is not None
    # as Triton on another host answers: it has no such key to open
    monkeypatch.setattr(engine.regions, "_register",
                        lambda name, key, size: engine._register(name, "/foveal-no-such-key", size))
    try:
        remote = run(engine, "zoom")
    finally:
        engine.close()
    assert engine.regions.failed and "shared memory" in engine.regions.failed.lower()
    assert engine.regions.regions == 0
    assert remote.conversation.ids == run(taught_vlm, "zoom").conversation.ids


def _shared_regions(stack: Stack) -> set[str]:
    client = triton_grpc.InferenceServerClient(stack.settings.triton_address)
    try:
        return set(client.get_system_shared_memory_status(as_json=True).get("regions", {}))
    finally:
        client.close()


@pytest.mark.parametrize("ship_frame", [True, False], ids=["frame-sent", "probes-sent"])
def test_grounded_answers_reach_the_service_as_they_are_in_process(
        triton: Stack, taught_vlm: VLM, ship_frame: bool) -> None:
    # the chat format a client of a remote model has (`load_chat`): views without patches
    remote_chat = ChatFormat(taught_vlm.tokenizer, taught_vlm.chat.spec, patches=False)
    engine = TritonEngine(triton.settings.triton_address, "foveal_vl_pointer", remote_chat, taught_vlm.budget)
    asked: list[int] = []  # per reply, how many candidate crops it asked for
    turns = engine.turns

    def counted(requests: Sequence[TurnRequest], timeout_s: float | None = None) -> list[TurnReply]:
        replies = turns(requests, timeout_s)
        asked.extend(len(r.probes) for r in replies)
        return replies

    engine.turns = counted  # type: ignore[method-assign]
    options = replace(OPTIONS, ship_frame=ship_frame)
    try:
        remote = Loop(engine, options).run([item("zoom")])[0]
    finally:
        engine.close()
    if ship_frame:  # the model cut the probes from the frame it was sent: two calls for a zoom
        assert asked == [0, 0]
    else:  # the box's candidates and the tight look went back to Triton as crops
        assert asked == [8, 0, 1, 0]
    local = Loop(LocalEngine(taught_vlm, pointer=True, rerank=8), options).run([item("zoom")])[0]
    assert remote.conversation.ids == local.conversation.ids
    assert remote.conversation.loss == local.conversation.loss  # the engine's tokens flagged alike
    assert remote.defect_type == local.defect_type != "scratch"  # the head's reading, not the script's
    assert remote.confidence == pytest.approx(local.confidence, abs=1e-4)
    assert local.confidence < local.defect_score  # the head's type probability is part of it


def _metric(stack: Stack, name: str) -> float:
    url = f"http://{stack.settings.bind_host}:{stack.settings.triton_metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'model="foveal_vl"' in line)


def test_concurrent_inspections_are_batched_by_triton(triton: Stack, triton_engine: TritonEngine) -> None:
    before = _metric(triton, "nv_inference_count"), _metric(triton, "nv_inference_exec_count")
    names = sorted(SCRIPTS) * 4
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        traces = list(pool.map(lambda n: run(triton_engine, n), names))
    after = _metric(triton, "nv_inference_count"), _metric(triton, "nv_inference_exec_count")
    requests, executions = after[0] - before[0], after[1] - before[1]
    assert requests > executions > 0, (requests, executions)  # several turns per model execution
    for name, trace in zip(names, traces, strict=True):
        assert trace.defect_type == SCRIPTS[name][2][-1].removeprefix("\\boxed{").removesuffix("}")


def test_a_release_ends_the_sequence_on_triton_without_a_blocking_call(
        triton_engine: TritonEngine, taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    chat, session = taught_vlm.chat, 7_000_001
    view = np.zeros((336, 448, 3), np.uint8)
    triton_engine.turns([TurnRequest(session, chat.prompt([view], "Inspect this part."), 2, chat.stop_ids)])
    blocking: list[object] = []
    real_infer = triton_engine.client.infer

    def seen(*args: object, **kwargs: object) -> object:
        blocking.append(kwargs)
        return real_infer(*args, **kwargs)

    monkeypatch.setattr(triton_engine.client, "infer", seen)
    triton_engine.release([session])
    assert blocking == []  # the inspection's result does not wait for the release's round trip
    monkeypatch.undo()
    # the sequence is over on the server: going on with it (no START) is refused
    empty = _inputs(np.zeros(0, np.int64), [], 0, (), (), 0.0, False, 1, ())
    deadline = time.monotonic() + 10
    while True:
        try:
            triton_engine._infer(empty, session, start=False, end=False, timeout_s=5.0)
        except EngineError as exc:
            assert "START" in str(exc)
            break
        assert time.monotonic() < deadline, "the release never reached Triton"
        time.sleep(0.05)


def test_a_passed_deadline_is_deadline_exceeded_and_the_model_stays_usable(
        triton_engine: TritonEngine) -> None:
    with pytest.raises(DeadlineExceeded):
        Loop(triton_engine, OPTIONS).run([item("zoom")], deadline=time.monotonic() + 0.005)
    assert run(triton_engine, "zoom").operations == 1


def test_an_unloaded_model_is_unavailable_until_loaded_again(
        triton: Stack, triton_engine: TritonEngine) -> None:
    client = triton_grpc.InferenceServerClient(triton.settings.triton_address)
    try:
        client.unload_model("foveal_vl")
        deadline = time.monotonic() + 30
        while triton_engine.ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not triton_engine.ready()
        with pytest.raises(EngineUnavailable):
            run(triton_engine, "zoom")
    finally:
        client.load_model("foveal_vl")
        client.close()
    assert triton_engine.ready()
    assert run(triton_engine, "zoom").operations == 1


def test_a_readiness_probe_without_an_answer_is_unavailable_not_a_no(taught_vlm: VLM) -> None:
    engine = TritonEngine("127.0.0.1:9", "foveal_vl", taught_vlm.chat, taught_vlm.budget)  # nothing listens
    try:
        with pytest.raises(EngineUnavailable, match="did not answer a readiness probe"):
            engine.ready(timeout_s=0.5)
    finally:
        engine.close()


def test_the_host_rejects_a_malformed_request_alone(taught_vlm: VLM) -> None:
    host = ModelHost(LocalEngine(taught_vlm))
    fmt = taught_vlm.chat
    prompt = fmt.prompt([frames_for("zoom", 1)[0][:112, :112]], "Inspect this part.")
    good = {"TOKENS": np.asarray([prompt.ids]), "IMAGES": prompt.images[0].reshape(1, -1),
            "IMAGE_SHAPES": np.asarray([[112, 112]], np.int32), "MAX_NEW_TOKENS": np.asarray([[4]], np.int32),
            "STOP_IDS": np.asarray([sorted(fmt.stop_ids)])}
    bad = dict(good, IMAGE_SHAPES=np.asarray([[112, 56]], np.int32))  # fewer pixels than sent
    out = host.execute([(good, Control(1, True, False)), (bad, Control(2, True, False))])
    assert isinstance(out[0], dict) and out[0]["GENERATED"].shape[1] >= 1
    assert isinstance(out[1], str) and "IMAGES holds" in out[1]
    assert set(host.engine.sessions) == {1}
    host.execute([({"TOKENS": np.zeros((1, 0), np.int64)}, Control(1, False, True))])
    assert host.engine.sessions == {}


def test_the_host_keeps_a_sent_frame_and_rejects_regions_outside_it(taught_vlm: VLM) -> None:
    host = ModelHost(LocalEngine(taught_vlm, pointer=True, rerank=8))
    fmt = taught_vlm.chat
    frame = frames_for("zoom", 1)[0]
    ws = Workspace([frame], taught_vlm.budget)
    prompt = fmt.prompt([ws.views[0].pixels], SCRIPTS["zoom"][0])
    ids = np.asarray(prompt.ids, np.int64)

    def tensors(**changes: object) -> dict[str, np.ndarray]:
        arrays = {"source": frame, "regions": (ws.views[0].region,), **changes}
        return {name: value[None] for name, value, _ in _arrays(
            ids, prompt.images, 1, sorted(fmt.stop_ids), (), 0.0, False, 1, (), **arrays)}  # type: ignore[arg-type]

    height, width = frame.shape[:2]
    out = host.execute([(tensors(), Control(1, True, False)),
                        (tensors(regions=((0, 0, width + 1, height),)), Control(2, True, False)),
                        (tensors(source=None), Control(3, True, False)),
                        (dict(tensors(), REGIONS=np.asarray([[0, 0, 8]], np.int32)),
                         Control(4, True, False))])
    assert isinstance(out[0], dict)
    assert isinstance(out[1], str) and "outside" in out[1]
    assert isinstance(out[2], str) and "SOURCE" in out[2]
    assert isinstance(out[3], str) and "REGIONS holds 3 numbers" in out[3]
    kept = host.engine.source_frame(1)
    assert kept is not None and np.array_equal(kept, frame)
    assert host.engine.sources[1].regions == [ws.views[0].region]
    assert set(host.engine.sources) == {1}  # nothing kept of the rejected ones
    host.execute([({"TOKENS": np.zeros((1, 0), np.int64)}, Control(1, False, True))])
    assert host.engine.sources == {}


def test_the_host_runs_torch_on_the_threads_its_config_names(taught_vlm: VLM, tmp_path: Path) -> None:
    save(taught_vlm, tmp_path / "weights")
    before = torch.get_num_threads()
    try:
        host = ModelHost.load(tmp_path / "weights", threads=1, device="cpu")
        assert torch.get_num_threads() == 1
        assert isinstance(host.engine, LocalEngine)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        ModelHost.load(tmp_path / "weights", threads=-1)


def test_the_host_runs_the_reranked_looks_in_the_precision_its_config_names(taught_vlm: VLM,
                                                                          tmp_path: Path) -> None:
    save(taught_vlm, tmp_path / "weights")
    for precision, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        host = ModelHost.load(tmp_path / "weights", device="cpu", tower_precision=precision)
        assert host.engine.vlm.model.model.visual.probe_dtype is dtype
    with pytest.raises(ValueError, match="tower precision"):
        ModelHost.load(tmp_path / "weights", tower_precision="half")


def test_the_host_tells_the_pointer_a_sequence_from_a_frame(taught_vlm: VLM) -> None:
    host = ModelHost(LocalEngine(taught_vlm, pointer=True))
    fmt = taught_vlm.chat
    prompt = fmt.prompt([frames_for("select", 1)[0][:112, :112]], "Inspect this sequence of 3 frames.")
    first = {"TOKENS": np.asarray([prompt.ids]), "IMAGES": prompt.images[0].reshape(1, -1),
             "IMAGE_SHAPES": np.asarray([[112, 112]], np.int32),
             "MAX_NEW_TOKENS": np.asarray([[1]], np.int32), "STOP_IDS": np.asarray([sorted(fmt.stop_ids)])}
    host.execute([(dict(first, FRAMES=np.asarray([[3]], np.int32)), Control(1, True, False)),
                  (first, Control(2, True, False))])
    sequence, frame = host.engine.looks[1], host.engine.looks[2]
    assert sorted(sequence.frames) == [1, 2, 3] and not sequence.boxes  # tiles ranked, no crop on them
    assert frame.boxes and not frame.frames  # a frame without FRAMES: crop candidates only


def test_the_host_hears_that_operations_are_disabled(taught_vlm: VLM) -> None:
    # a look-first checkpoint turns a defect named from the whole view into a zoom, which an
    # inspection without operations cannot take: OPERATIONS tells the model
    host = ModelHost(LocalEngine(taught_vlm, pointer=True, look_first=True))
    fmt = taught_vlm.chat
    prompt = fmt.prompt([frames_for("zoom", 1)[0]], SCRIPTS["zoom"][0])
    zoom = taught_vlm.tokenizer.encode(ZOOM_SENTENCE, add_special_tokens=False)
    ids = np.asarray(prompt.ids, np.int64)
    first = {name: value for name, value, _ in _arrays(ids, prompt.images, len(zoom), sorted(fmt.stop_ids),
                                                       (), 0.0, False, 1, ())}
    off = {name: value for name, value, _ in _arrays(ids, prompt.images, len(zoom), sorted(fmt.stop_ids),
                                                     (), 0.0, False, 1, (), operations=False)}
    assert "OPERATIONS" not in first and not off["OPERATIONS"][0]
    out = host.execute([({k: v[None] for k, v in first.items()}, Control(1, True, False)),
                        ({k: v[None] for k, v in off.items()}, Control(2, True, False))])
    assert isinstance(out[0], dict) and isinstance(out[1], dict)
    assert out[0]["GENERATED"][0].tolist() == zoom and out[0]["FORCED"][0].all()
    # without operations the turn opens with the model's own token, not the written zoom sentence
    # (a defect it names may still get its type written by the pointer)
    assert out[1]["GENERATED"][0].tolist()[:len(zoom)] != zoom and not out[1]["FORCED"][0][0]


def test_a_look_first_checkpoint_on_triton_looks_as_in_process_and_not_without_operations(
        triton: Stack, taught_vlm: VLM) -> None:
    # the config.pbtxt declares OPERATIONS (Triton refuses an undeclared input) and the model
    # reads it: without operations the checkpoint answers as it would, with them it looks first
    address = triton.settings.triton_address
    engine = TritonEngine(address, "foveal_vl_look", taught_vlm.chat, taught_vlm.budget)
    try:
        remote = run(engine, "zoom")
        plain = Loop(engine, replace(OPTIONS, allow_operations=False)).run([item("zoom")])[0]
    finally:
        engine.close()
    looking = LocalEngine(taught_vlm, pointer=True, rerank=8, look_first=True)
    local = Loop(looking, OPTIONS).run([item("zoom")])[0]
    assert local.steps[0].text.startswith(ZOOM_SENTENCE)
    assert remote.conversation.ids == local.conversation.ids
    assert remote.conversation.loss == local.conversation.loss
    assert plain.steps[0].text.startswith("A mark.") and plain.operations == 0


def test_a_look_first_sequence_on_triton_ranks_its_frames_and_looks_as_in_process(
        triton: Stack, taught_vlm: VLM) -> None:
    # the frames go to Triton as PROBES when the model asks for them (PROBE_IMAGE -1), and the
    # selection and the zoom it writes are the in-process ones
    options = replace(OPTIONS, max_turn_tokens=96)
    address = triton.settings.triton_address
    engine = TritonEngine(address, "foveal_vl_look", taught_vlm.chat, taught_vlm.budget)
    try:
        remote = Loop(engine, options).run([item("select")])[0]
    finally:
        engine.close()
    looking = LocalEngine(taught_vlm, pointer=True, rerank=8, look_first=True)
    local = Loop(looking, options).run([item("select")])[0]
    first = local.steps[0]
    assert first.text.startswith("Let me view tiles ") and first.operation == "select_frames"
    assert local.steps[1].text.startswith(ZOOM_SENTENCE)
    assert remote.conversation.ids == local.conversation.ids
    assert remote.conversation.loss == local.conversation.loss


def test_a_grounded_selection_reaches_the_service_as_it_is_in_process(triton: Stack, taught_vlm: VLM) -> None:
    # the frame count travels as FRAMES: without it the pointer would take the overview for one frame
    engine = TritonEngine(triton.settings.triton_address, "foveal_vl_pointer", taught_vlm.chat,
                          taught_vlm.budget)
    try:
        remote = run(engine, "select")
    finally:
        engine.close()
    local = Loop(LocalEngine(taught_vlm, pointer=True, rerank=8), OPTIONS).run([item("select")])[0]
    own = run(taught_vlm, "select")  # the model's own frames, without the pointer
    # the pointer's frames differ from the model's own: in their numbers, or, where the numbers are
    # the same, in their loss (the frames it writes carry none); so the equality below tells that
    # the pointer ran on Triton
    assert (local.conversation.ids, local.conversation.loss) != (own.conversation.ids, own.conversation.loss)
    assert remote.conversation.ids == local.conversation.ids
    assert remote.conversation.loss == local.conversation.loss
