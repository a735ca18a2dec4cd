"""Grounded zooms (`foveal.reasoning.pointer`): a compact model's crop takes its box from its own
cell head, the next crop the next candidate, and the box carries no loss; a sequence's selection
takes the frames whose tiles look most defect-like, in the call and in the prose, and a crop
after it lands on the selected frame that looks worst; towers without a cell head are left as
they were."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from foveal.domain import DEFECT_TYPES
from foveal.model.chat import Chunk
from foveal.model.loader import VLM, create
from foveal.model.pixels import patchify
from foveal.operations import ImageBudget, Workspace, look_at, pad_and_clamp, preview
from foveal.reasoning.engine import LocalEngine, TurnReply, TurnRequest, _Batch, _Session
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace
from foveal.reasoning.pointer import (
    CLOSE,
    FRAMES_PROBE,
    PROBE_PIXELS,
    SELECT_SENTENCE,
    TRIGGER,
    ZOOM_SENTENCE,
    CellPointer,
    Looks,
    looked_frames,
)
from tests.reasoning.protocol_model import SCRIPTS, frames_for

SCRIPTED = [0.2, 0.2, 0.4, 0.4]  # the box the taught model writes itself


def run(vlm: VLM, name: str, max_turn_tokens: int = 48, **options: object) -> Trace:
    prompt, n, _ = SCRIPTS[name]
    loop = Loop(vlm, LoopOptions(max_turn_tokens=max_turn_tokens, **options))  # type: ignore[arg-type]
    return loop.run([Inspection(frames_for(name, n), prompt)])[0]


def test_each_image_goes_through_the_backbone_once_for_the_model_and_the_pointer(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    tower = taught_vlm.model.model.visual
    original = type(tower).backbone
    seen: list[int] = []

    def counting(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(int(x.shape[0]))
        return original(self, x)  # type: ignore[no-any-return]

    monkeypatch.setattr(type(tower), "backbone", counting)
    trace = run(taught_vlm, "zoom", pointer=True, rerank=0)
    assert trace.operations == 1 and trace.defect_type  # the frame, a grounded crop, an answer read on it
    assert sum(seen) == len(trace.conversation.patches) == 2


def test_a_zoom_takes_its_box_from_the_cell_head(taught_vlm: VLM) -> None:
    trace = run(taught_vlm, "zoom", pointer=True)
    pointer = CellPointer(taught_vlm)
    first_image = trace.conversation.patches[0], tuple(trace.conversation.grids[0])
    expected = pointer.looks(*first_image).boxes[0]  # type: ignore[arg-type]
    assert list(expected) != SCRIPTED  # otherwise the test could not tell the two apart
    step = trace.steps[0]
    assert step.operation == "crop_image_normalized" and step.ok
    assert step.arguments == {"bbox_2d": list(expected), "target_image": 1}
    assert trace.defect_type is not None and trace.operation_errors == 0


def test_without_the_pointer_the_model_writes_its_own_box(taught_vlm: VLM) -> None:
    trace = run(taught_vlm, "zoom", pointer=False)
    assert trace.steps[0].arguments == {"bbox_2d": SCRIPTED, "target_image": 1}


def test_the_checkpoint_chooses_when_the_loop_does_not(taught_vlm: VLM) -> None:
    vlm = copy.copy(taught_vlm)
    vlm.meta = dict(taught_vlm.meta, pointer=True)
    assert LocalEngine(vlm).pointer is not None
    assert LocalEngine(vlm, pointer=False).pointer is None
    assert LocalEngine(taught_vlm).pointer is None  # off unless the checkpoint says so


def test_a_selection_takes_the_frames_whose_tiles_look_worst(taught_vlm: VLM,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 frames tile as 2 x 2 (`operations.overview`): frame 1 upper left, 2 upper right, 3 lower left
    defect = torch.zeros(4, 6)
    defect[0, 4] = 0.9  # frame 2
    defect[3, 1] = 0.6  # frame 3
    defect[3, 5] = 1.0  # the empty fourth tile: ignored
    monkeypatch.setattr(CellPointer, "_defect", lambda self, patches, grid: defect)
    assert CellPointer(taught_vlm).frame_looks(None, (1, 4, 6), frames=3).frames == [2, 3, 1]  # type: ignore[arg-type]
    step = run(taught_vlm, "select", pointer=True).steps[0]
    assert step.operation == "select_frames" and step.ok
    assert step.arguments == {"target_frames": [2, 3]}
    assert run(taught_vlm, "select", pointer=False).steps[0].arguments == {"target_frames": [1, 3]}


def test_frame_numbers_in_prose_are_the_pointers_and_the_call_repeats_them(taught_vlm: VLM) -> None:
    pointer = CellPointer(taught_vlm)
    tok = taught_vlm.tokenizer
    looks = Looks([], frames=[5, 2, 7, 1], images=1)
    said = tok.encode("A faint mark shows in tiles ", add_special_tokens=False)
    digit = tok.encode("8", add_special_tokens=False)[0]
    written = str(tok.decode(pointer.forced(looks, said, digit)))
    assert written.replace(" ", "") == "2and5."
    stop = tok.encode(".", add_special_tokens=False)[0]
    assert pointer.forced(looks, said, stop) == []  # not a number: the model's own
    call = tok.encode('<tool_call>{"name": "select_frames", "arguments": {"target_frames": [',
                      add_special_tokens=False)
    assert str(tok.decode(pointer.forced(looks, call, digit))).replace(" ", "") == "2,5]}}</tool_call>"
    # the next selection (a retry) takes the next two frames of the ranking
    assert str(tok.decode(pointer.forced(looks, call, digit))).replace(" ", "") == "1,7]}}</tool_call>"


def test_a_crop_after_a_selection_goes_on_the_selected_frame_that_looks_worst(taught_vlm: VLM) -> None:
    trace = run(taught_vlm, "select", pointer=True)
    pointer = CellPointer(taught_vlm)
    patches, grids = trace.conversation.patches, [tuple(g) for g in trace.conversation.grids]
    looks = pointer.frame_looks(patches[0], grids[0], frames=3)
    arguments = trace.steps[0].arguments or {}
    selected = [int(f) for f in arguments["target_frames"]]  # type: ignore[attr-defined]
    looks.selecting = selected  # the selection was written; its two frames are shown next
    frames = list(patches[1:3])
    pointer.shown(looks, frames, grids[1:3])
    with torch.inference_mode():
        peaks = [float(pointer._defect(p, g).max()) for p, g in zip(frames, grids[1:3], strict=True)]
    worst = max(range(2), key=lambda i: peaks[i])
    assert looks.box_image == 2 + worst and looks.images == 3
    assert looks.last is not None and looks.last[0] is frames[worst]  # and the answer reads it
    text = str(taught_vlm.tokenizer.decode(pointer.box_tokens(looks))).replace(" ", "")
    assert text.endswith(f'"target_image":{2 + worst}}}}}</tool_call>')


def test_a_sampled_zoom_is_pointed_and_its_box_carries_no_loss(taught_vlm: VLM) -> None:
    # the first seed whose sampled turn opens a box the way the protocol writes it
    trace = next(t for t in (run(taught_vlm, "zoom", pointer=True, temperature=1.0, seed=seed)
                             for seed in range(20)) if TRIGGER in t.steps[0].text)
    pointer = CellPointer(taught_vlm)
    looks = pointer.looks(trace.conversation.patches[0], tuple(trace.conversation.grids[0]))
    assert trace.steps[0].arguments == {"bbox_2d": list(looks.boxes[0]), "target_image": 1}
    written = pointer.box_tokens(looks)  # what the engine wrote after `"bbox_2d": [`
    ids, loss = trace.conversation.ids, trace.conversation.loss
    at = next(i for i in range(len(ids)) if ids[i:i + len(written)] == written)
    assert not any(loss[at:at + len(written)])  # the box is the engine's, not the policy's
    assert all(loss[at - 3:at])  # the tokens that opened the crop are the model's own
    assert sum(loss) > len(written)  # and so is the rest of what it generated


def test_each_further_box_is_the_next_candidate(taught_vlm: VLM) -> None:
    pointer = CellPointer(taught_vlm)
    looks = Looks([(0.0, 0.0, 0.12, 0.12), (0.5, 0.36, 0.62, 0.48)])
    texts = [taught_vlm.tokenizer.decode(pointer.box_tokens(looks)) for _ in range(3)]
    close = CLOSE.replace(" ", "")
    assert [t.replace(" ", "") for t in texts] == [f'0.0,0.0,0.12,0.12{close}', f'0.5,0.36,0.62,0.48{close}',
                                                   f'0.0,0.0,0.12,0.12{close}']


def test_a_tower_without_a_cell_head_cannot_point(micro_tokenizer: PreTrainedTokenizerBase) -> None:
    plain = create(micro_tokenizer, "v1", seed=0)
    assert not CellPointer.available(plain)
    with pytest.raises(ValueError, match="no cell head"):
        LocalEngine(plain, pointer=True)
    plain.meta["pointer"] = True
    assert LocalEngine(plain).pointer is None  # the checkpoint's wish is ignored, not an error


def test_a_re_encoded_turn_keeps_the_inspections_pointer(taught_vlm: VLM) -> None:
    # the re-encoding baseline sends the whole conversation with `restart` every turn: the same
    # inspection, whose selected frames are the chunk's last images
    conversation = run(taught_vlm, "select", pointer=True).conversation
    engine = LocalEngine(taught_vlm, pointer=True)

    def turn(images: int) -> None:
        chunk = Chunk()
        chunk.patches, chunk.grids = list(conversation.patches[:images]), list(conversation.grids[:images])
        request = TurnRequest(7, chunk, 8, frozenset(), restart=True, frames=3)
        engine._point([request], [_Session([], 0, 0.0)])

    turn(1)
    looks = engine.looks[7]
    assert looks.frames and not looks.boxes
    looks.selecting = [1, 2]  # the pointer wrote a selection of two frames
    turn(3)
    assert engine.looks[7] is looks and looks.images == 3
    assert looks.boxes and looks.box_image in (2, 3)  # crops now go on a selected frame


def test_a_defect_answer_takes_its_type_from_the_view_head_on_the_last_image(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    read_on: list[object] = []

    def read(self: CellPointer, looks: Looks) -> tuple[str, float]:
        read_on.append(looks.last[0] if looks.last else None)
        return "burn", 0.25  # what the taught model never says itself (it answers `scratch`)

    monkeypatch.setattr(CellPointer, "read", read)
    trace = run(taught_vlm, "zoom", pointer=True)
    assert trace.steps[0].operation == "crop_image_normalized" and trace.steps[0].ok
    assert trace.defect_type == "burn"
    crop = trace.conversation.patches[1]
    assert len(read_on) == 1 and read_on[0] is crop  # read on the crop, the last image shown
    # the decoder's belief that there is a defect times the head's in the type
    assert trace.confidence == pytest.approx(trace.defect_score * 0.25)
    written = taught_vlm.tokenizer.encode("burn}", add_special_tokens=False)
    assert len(written) > 1  # so that the rest below is not empty
    ids, loss = trace.conversation.ids, trace.conversation.loss
    at = max(i for i in range(len(ids)) if ids[i:i + len(written)] == written)
    assert loss[at]  # that there is a defect was the policy's decision
    assert not any(loss[at + 1:at + len(written)])  # the rest of the type is the head's
    assert run(taught_vlm, "zoom", pointer=False).defect_type == "scratch"


def test_a_grounded_answer_keeps_what_the_view_head_read_its_type_from(taught_vlm: VLM) -> None:
    # `foveal train readout` refits the view classifier on these
    trace = run(taught_vlm, "zoom", pointer=True)
    assert trace.defect_type in DEFECT_TYPES[1:] and trace.answer_features is not None
    head = taught_vlm.model.model.visual.head
    logits = head.view(torch.from_numpy(trace.answer_features)[None].to(head.view.weight.dtype))[0]
    assert DEFECT_TYPES[1 + int(logits[1:len(DEFECT_TYPES)].argmax())] == trace.defect_type
    assert run(taught_vlm, "zoom", pointer=False).answer_features is None  # the decoder's own type


def _with_reader(vlm: VLM, favourite: str | None) -> VLM:
    """A copy of `vlm` with a type reader of its own that reads `favourite` on everything (None:
    every defect type equally likely)."""
    copied = copy.deepcopy(vlm)
    reader = copied.model.model.visual.enable_reader()
    with torch.no_grad():
        reader.weight.zero_()
        reader.bias.zero_()
        if favourite is not None:
            reader.bias[DEFECT_TYPES.index(favourite)] = 10.0
    return copied


def test_a_type_reader_of_its_own_reads_the_type_and_leaves_the_image_tokens(taught_vlm: VLM) -> None:
    plain = run(taught_vlm, "zoom", pointer=True)
    read = run(_with_reader(taught_vlm, "stain"), "zoom", pointer=True)
    assert plain.defect_type != "stain" and read.defect_type == "stain"
    assert read.answer_features is not None and np.array_equal(read.answer_features, plain.answer_features)
    # the view head was not touched, so the decoder saw the same tokens up to the answer's type
    def before_type(trace: Trace) -> str:
        text = taught_vlm.tokenizer.decode(trace.conversation.ids)
        return text[:text.rindex("\\boxed{")]

    assert before_type(read) == before_type(plain) and read.defect_score == plain.defect_score


def test_a_reader_backbone_of_its_own_reads_from_its_own_maps_and_leaves_the_image_tokens(
        taught_vlm: VLM) -> None:
    plain = run(taught_vlm, "zoom", pointer=True)
    copied = copy.deepcopy(taught_vlm)
    own = copied.model.model.visual.enable_reader_backbone()
    same = run(copied, "zoom", pointer=True)  # a copy of the tower's backbone reads as it did
    assert same.defect_type == plain.defect_type
    assert np.array_equal(same.answer_features, plain.answer_features)
    with torch.no_grad():
        for p in own.parameters():
            p.add_(0.2 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    moved = run(copied, "zoom", pointer=True)
    assert moved.answer_features is not None and not np.allclose(moved.answer_features, plain.answer_features)
    def before_answer(trace: Trace) -> str:
        return str(taught_vlm.tokenizer.decode(trace.conversation.ids)).rsplit("\\boxed{", 1)[0]

    assert before_answer(moved) == before_answer(plain)
    assert moved.defect_score == plain.defect_score  # the decoder decided on the same tokens


def test_a_sampled_type_read_draws_from_the_reader_and_a_greedy_one_takes_its_best(taught_vlm: VLM) -> None:
    vlm = _with_reader(taught_vlm, None)  # every type equally likely
    prompt, n, _ = SCRIPTS["zoom"]
    items = [Inspection(frames_for("zoom", n), prompt, item_id=str(k)) for k in range(12)]
    options = LoopOptions(max_turn_tokens=48, pointer=True, temperature=0.05, seed=0)
    drawn = [t.defect_type for t in Loop(vlm, replace(options, sample_type=True)).run_batched(items)]
    best = [t.defect_type for t in Loop(vlm, options).run_batched(items)]
    assert set(best) == {DEFECT_TYPES[1]}  # ties go to the first
    assert len(set(drawn) & set(DEFECT_TYPES[1:])) >= 3  # 12 draws of 6 equally likely types


def test_the_decision_that_there_is_a_defect_stays_the_decoders(taught_vlm: VLM) -> None:
    pointer = CellPointer(taught_vlm)
    tok = taught_vlm.tokenizer
    frame = run(taught_vlm, "zoom", pointer=True).conversation
    looks = pointer.looks(frame.patches[0], tuple(frame.grids[0]))
    opened = tok.encode("A mark: \\boxed{", add_special_tokens=False)
    none = tok.encode("none", add_special_tokens=False)[0]
    pit = tok.encode("pit", add_special_tokens=False)[0]
    assert pointer.forced(looks, opened, none) == []  # `none` is the model's own answer
    reading, prob = pointer.read(looks)
    assert reading != "none" and 1 / 6 <= prob <= 1  # the most likely of the six defect types
    assert pointer.forced(looks, opened, pit) == tok.encode(reading + "}", add_special_tokens=False)
    assert looks.answered == prob  # the engine hands it on as the reply's `answer_prob`
    assert CellPointer(taught_vlm, answers=False).forced(looks, opened, pit) == []


def test_a_single_frame_is_looked_at_before_its_verdict(taught_vlm: VLM) -> None:
    tok = taught_vlm.tokenizer
    frame = run(taught_vlm, "zoom", pointer=True).conversation
    pointer = CellPointer(taught_vlm, look_first=True)
    zoom = tok.encode(ZOOM_SENTENCE, add_special_tokens=False)
    looks = pointer.looks(frame.patches[0], tuple(frame.grids[0]))
    for verdict in ("A crack at the centre", "A pit", "No marks: the whole frame shows an even surface."):
        first = tok.encode(verdict, add_special_tokens=False)[0]
        assert pointer.forced(looks, [], first) == zoom, verdict
        assert pointer.forced(looks, [], first, operations=False) == [], verdict  # `--no-ops` answers
        assert CellPointer(taught_vlm).forced(looks, [], first) == [], verdict  # off unless asked for
    assert pointer.forced(looks, [], zoom[0]) == []  # the model's own zoom is its own
    naming = tok.encode("A ", add_special_tokens=False)[0]
    assert pointer.forced(looks, tok.encode("The ", add_special_tokens=False), naming) == []  # mid-turn
    looks.images = 2  # a crop is shown: "A pit: up close ..." is a verdict after a look
    assert pointer.forced(looks, [], naming) == []
    overview = pointer.frame_looks(frame.patches[0], tuple(frame.grids[0]), 3)
    assert pointer.forced(overview, [], zoom[0]) != zoom  # a sequence's overview cannot be cropped


def test_a_sequence_selects_its_worst_looking_frames_and_looks_inside_one_before_its_verdict(
        taught_vlm: VLM) -> None:
    tok = taught_vlm.tokenizer
    pointer = CellPointer(taught_vlm, look_first=True)
    zoom = tok.encode(ZOOM_SENTENCE, add_special_tokens=False)
    naming = tok.encode("A ", add_special_tokens=False)[0]
    overview = Looks([], frames=[5, 2, 7, 1], images=1)
    assert CellPointer(taught_vlm).forced(overview, [], naming) == []  # off unless asked for
    assert pointer.forced(overview, [], naming, operations=False) == []  # `--no-ops` answers
    written = str(tok.decode(pointer.selection_tokens(Looks([], frames=[5, 2, 7, 1], images=1))))
    assert written == ('Let me view tiles 2 and 5 up close.\n'
                       '<tool_call>{"name": "select_frames", '
                       '"arguments": {"target_frames": [2, 5]}}</tool_call>')
    # whatever the model starts with on the overview (a verdict, a crop), the selection is written
    for first in (naming, zoom[0]):
        fresh = Looks([], frames=[5, 2, 7, 1], images=1)
        assert str(tok.decode(pointer.forced(fresh, [], first))) == written
        assert fresh.selecting == [2, 5]
        assert pointer.forced(fresh, [], naming) == []  # once
    selected = Looks([(0.1, 0.1, 0.3, 0.3)], frames=[5, 2, 7, 1], images=3, box_image=3, frames_used=2)
    assert pointer.forced(selected, [], naming) == zoom  # the frames are shown: a look comes next
    assert pointer.forced(selected, [], zoom[0]) == []  # the model's own zoom is its own
    selected.crop_image = 4  # a crop is shown: the verdict is the model's
    assert pointer.forced(selected, [], naming) == []


def test_a_look_first_sequence_runs_select_then_crop_with_the_engines_words_carrying_no_loss(
        taught_vlm: VLM) -> None:
    # the written selection is longer than the micro tests' 48-token turns
    trace = run(taught_vlm, "select", max_turn_tokens=96, pointer=True, look_first=True)
    plain = run(taught_vlm, "select", pointer=True)
    first = trace.steps[0]
    assert first.text.startswith("Let me view tiles ") and first.operation == "select_frames" and first.ok
    assert first.arguments == plain.steps[0].arguments  # the frames are the pointer's either way
    assert trace.steps[1].text.startswith(ZOOM_SENTENCE)
    ids, loss = trace.conversation.ids, trace.conversation.loss
    opening = taught_vlm.tokenizer.encode(first.text, add_special_tokens=False)  # written as one piece
    at = next(i for i in range(len(ids)) if ids[i:i + len(opening)] == opening)
    assert not any(loss[at:at + len(opening)])  # the engine's choice, not the policy's
    no_ops = run(taught_vlm, "select", pointer=True, look_first=True, allow_operations=False)
    assert not no_ops.steps[0].text.startswith("Let me view") and no_ops.operations == 0


def test_the_zoom_written_before_a_verdict_is_the_trajectories_and_carries_no_loss(
        taught_vlm: VLM) -> None:
    from foveal.training import trajectories

    assert ZOOM_SENTENCE == trajectories._ZOOM
    trace = run(taught_vlm, "zoom", pointer=True, look_first=True)
    assert trace.steps[0].text.startswith(ZOOM_SENTENCE)  # the taught script opens "A mark."
    zoom = taught_vlm.tokenizer.encode(ZOOM_SENTENCE, add_special_tokens=False)
    ids, loss = trace.conversation.ids, trace.conversation.loss
    at = next(i for i in range(len(ids)) if ids[i:i + len(zoom)] == zoom)
    assert not any(loss[at:at + len(zoom)])  # the engine's choice, not the policy's
    assert run(taught_vlm, "zoom", pointer=True).steps[0].text.startswith("A mark.")
    plain = run(taught_vlm, "zoom", pointer=True, look_first=True, allow_operations=False)
    assert plain.steps[0].text.startswith("A mark.") and plain.operations == 0


def _probe_choice(vlm: VLM, trace: Trace, k: int
                  ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(the pointer's top look on the whole view, the one of its first `k` whose crop at full
    resolution has the highest cell-head peak, that look centred on the peak), computed here
    without the engine."""
    pointer = CellPointer(vlm)
    first = trace.conversation.patches[0], tuple(trace.conversation.grids[0])
    boxes = pointer.looks(*first).boxes[:k]  # type: ignore[arg-type]
    ws = Workspace(frames_for("zoom", 1), vlm.budget)
    probe = ImageBudget(PROBE_PIXELS, min(vlm.budget.min_pixels, PROBE_PIXELS), vlm.budget.factor)
    maps = []
    for box in boxes:
        view = preview(box, 1, ws, probe)
        assert view is not None and view.pixels.shape[0] * view.pixels.shape[1] <= PROBE_PIXELS
        patches, grid = patchify(view.pixels, vlm.chat.spec)
        maps.append(pointer._defect(patches, tuple(grid)))
    best = max(range(len(boxes)), key=lambda i: (float(maps[i].max()), -i))
    rows, cols = maps[best].shape
    at = int(maps[best].flatten().argmax())
    x1, y1, x2, y2 = pad_and_clamp(boxes[best])  # what the winner's crop shows
    centred = look_at(x1 + (at % cols + 0.5) / cols * (x2 - x1), y1 + (at // cols + 0.5) / rows * (y2 - y1))
    return boxes[0], boxes[best], centred


def _brightness(self: CellPointer, pixels: list[torch.Tensor], low_precision: bool = False
                ) -> list[torch.Tensor]:
    """A stand-in cell map that any crop changes: the mean of each 28 px cell's pixels."""
    cell = 14 * self.merge
    return [torch.nn.functional.avg_pool2d(image.float().mean(0, keepdim=True), cell)[0] for image in pixels]


def _brightness_of_patches(self: CellPointer, images: Sequence[tuple[np.ndarray, tuple[int, ...]]]
                           ) -> list[torch.Tensor]:
    """`_brightness` of images given as their patches and grids (the whole view's candidates)."""
    pixels = [self.tower.images(torch.from_numpy(p), torch.tensor([list(g)]))[0] for p, g in images]
    return _brightness(self, pixels)


def test_a_reranked_zoom_goes_to_the_candidate_whose_full_resolution_crop_looks_worst_centred_on_its_peak(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # the micro model's map is all alike: a stand-in for the whole view's cells and the probes' alike
    monkeypatch.setattr(CellPointer, "_cell_maps", _brightness)
    monkeypatch.setattr(CellPointer, "_defects", _brightness_of_patches)
    k = 8
    trace = run(taught_vlm, "zoom", pointer=True, rerank=k)
    top, chosen, best = _probe_choice(taught_vlm, trace, k)
    assert chosen != top  # otherwise the test could not tell reranking from the top look
    assert best != chosen  # nor centring on the peak from the candidate's own box
    assert abs(best[0] - chosen[0]) <= 0.18 and abs(best[1] - chosen[1]) <= 0.18  # inside its crop
    step = trace.steps[0]
    assert step.operation == "crop_image_normalized" and step.ok
    assert step.arguments == {"bbox_2d": list(best), "target_image": 1}
    assert run(taught_vlm, "zoom", pointer=True, rerank=0).steps[0].arguments["bbox_2d"] == list(top)  # type: ignore[index]
    # the candidates' crops were never shown: the conversation holds the frame and one crop
    assert len(trace.conversation.patches) == 2
    assert step.text.count(TRIGGER) == 1  # one turn, though the engine stopped in it once
    written = CellPointer(taught_vlm).box_tokens(Looks([best]))
    ids, loss = trace.conversation.ids, trace.conversation.loss
    at = next(i for i in range(len(ids)) if ids[i:i + len(written)] == written)
    assert not any(loss[at:at + len(written)]) and all(loss[at - 3:at])


def test_a_reranked_zoom_is_the_same_when_the_conversation_is_re_encoded(taught_vlm: VLM) -> None:
    kept = run(taught_vlm, "zoom", pointer=True, rerank=8)
    resent = run(taught_vlm, "zoom", pointer=True, rerank=8, reuse_cache=False)
    assert [s.text for s in resent.steps] == [s.text for s in kept.steps]
    assert resent.conversation.ids == kept.conversation.ids
    assert resent.conversation.loss == kept.conversation.loss
    assert resent.defect_type == kept.defect_type
    assert resent.confidence == pytest.approx(kept.confidence, abs=1e-5)


def _recorded_replies(monkeypatch: pytest.MonkeyPatch) -> list[TurnReply]:
    """Every reply `LocalEngine` gives from now on, in order."""
    replies: list[TurnReply] = []
    turns = LocalEngine._turns

    def spy(self: LocalEngine, requests: list[TurnRequest]) -> list[TurnReply]:
        out = turns(self, requests)
        replies.extend(out)
        return out

    monkeypatch.setattr(LocalEngine, "_turns", spy)
    return replies


def test_a_frame_sent_to_the_engine_lets_it_cut_the_probes_without_stopping_the_turn(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    replies = _recorded_replies(monkeypatch)
    shipped = run(taught_vlm, "zoom", pointer=True, rerank=8)
    calls_shipped, asked_shipped = len(replies), sum(bool(r.probes) for r in replies)
    replies.clear()
    stopped = run(taught_vlm, "zoom", pointer=True, rerank=8, ship_frame=False)
    # the loop cut them instead: a stop for the candidates and one for the tight look
    assert sum(bool(r.probes) for r in replies) == 2 and asked_shipped == 0
    assert calls_shipped == len(replies) - 2
    # and nothing else differs: the same crops, the same box, the same reading
    assert shipped.conversation.ids == stopped.conversation.ids
    assert shipped.conversation.loss == stopped.conversation.loss
    assert [s.arguments for s in shipped.steps] == [s.arguments for s in stopped.steps]
    assert shipped.defect_type == stopped.defect_type
    assert shipped.confidence == pytest.approx(stopped.confidence, abs=1e-5)


def test_a_frame_over_the_size_cap_is_not_sent_and_its_probes_are(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    replies = _recorded_replies(monkeypatch)
    frame = frames_for("zoom", 1)[0]
    pixels = frame.shape[0] * frame.shape[1]
    run(taught_vlm, "zoom", pointer=True, rerank=8, ship_max_pixels=pixels)
    assert sum(len(r.probes) for r in replies) == 0  # at the cap: sent, and the engine cut them
    replies.clear()
    run(taught_vlm, "zoom", pointer=True, rerank=8, ship_max_pixels=pixels - 1)
    # over it: the rerank crops and the tight look were asked for
    assert sorted(len(r.probes) for r in replies if r.probes) == [1, 8]


def test_an_engine_without_the_region_of_an_image_asks_for_its_probes(taught_vlm: VLM) -> None:
    prompt, n, _ = SCRIPTS["zoom"]
    frame = frames_for("zoom", n)[0]
    ws = Workspace([frame], taught_vlm.budget)
    engine = LocalEngine(taught_vlm, pointer=True, rerank=8)
    chat = taught_vlm.chat
    first = chat.prompt([ws.views[0].pixels], prompt)
    # the frame came, but not which region of it the whole view shows: the turn stops and asks
    [reply] = engine.turns([TurnRequest(1, first, 48, chat.stop_ids, source=frame)])
    assert len(reply.probes) == 8
    [reply] = engine.turns([TurnRequest(2, first, 48, chat.stop_ids, source=frame,
                                        regions=(ws.views[0].region,))])
    assert reply.probes == [] and TRIGGER in taught_vlm.tokenizer.decode(reply.tokens)
    engine.release([1, 2])
    assert engine.sources == {} and engine.sessions == {}


def test_the_checkpoint_chooses_how_many_looks_are_reranked(taught_vlm: VLM) -> None:
    vlm = copy.copy(taught_vlm)
    vlm.meta = dict(taught_vlm.meta, pointer=True, rerank=4)
    engine = LocalEngine(vlm)
    assert engine.pointer is not None and engine.pointer.rerank == 4
    assert LocalEngine(vlm, rerank=0).pointer.rerank == 0  # type: ignore[union-attr]
    assert LocalEngine(taught_vlm, pointer=True).pointer.rerank == 0  # type: ignore[union-attr]


def test_a_written_box_is_fed_in_one_pass_and_scored_as_the_model_reads_it(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[list[int]] = []
    replies: list[TurnReply] = []
    append, turns = LocalEngine._append, LocalEngine._turns

    def spy_append(self: LocalEngine, batch: _Batch, chunks: list[Chunk],
                   every: bool = False) -> torch.Tensor:
        fed.append([len(c) for c in chunks])
        return append(self, batch, chunks, every)

    def spy_turns(self: LocalEngine, requests: list[TurnRequest]) -> list[TurnReply]:
        out = turns(self, requests)
        replies.extend(out)
        return out

    monkeypatch.setattr(LocalEngine, "_append", spy_append)
    monkeypatch.setattr(LocalEngine, "_turns", spy_turns)
    trace = run(taught_vlm, "zoom", pointer=True)
    reply = next(r for r in replies if any(r.forced))
    written = [t for t, f in zip(reply.tokens, reply.forced, strict=False) if f]
    assert len(written) > 8  # the box and the call's end
    # one decoder pass for all of it (the call's last token, a stop, is not fed back)
    assert [len(written) - 1] in fed
    # and each token's log-probability is the one the model gives it reading the conversation
    monkeypatch.undo()
    engine = LocalEngine(taught_vlm)
    batch = _Batch.stack([_Session([], 0, 0.0)], engine._empty_cache(), engine.device)
    with torch.inference_mode():
        logp = torch.log_softmax(engine._append(batch, [trace.conversation], every=True)[0], dim=-1)
    ids = trace.conversation.ids
    at = next(i for i in range(len(ids)) if ids[i:i + len(reply.tokens)] == reply.tokens)
    expected = [float(logp[at + k - 1, ids[at + k]]) for k in range(len(reply.tokens))]
    assert reply.logprobs == pytest.approx(expected, abs=1e-4)


def test_an_answer_after_a_grounded_crop_reads_its_type_on_a_tight_look_inside_it(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[np.ndarray | None] = []
    read_tight = CellPointer.read_tight

    def spy(self: CellPointer, looks: Looks, crop: np.ndarray | None) -> None:
        got.append(crop)
        read_tight(self, looks, crop)

    monkeypatch.setattr(CellPointer, "read_tight", spy)
    prompt, n, _ = SCRIPTS["zoom"]
    loop = Loop(taught_vlm, LoopOptions(max_turn_tokens=48, pointer=True, rerank=8))
    trace = loop.run([Inspection(frames_for("zoom", n), prompt)])[0]
    step = trace.steps[0]
    assert step.operation == "crop_image_normalized" and step.ok and len(got) == 1
    # the probe is the tight look round the crop's most defect-like cell, cut from the frame
    pointer = CellPointer(taught_vlm)
    ws = Workspace(frames_for("zoom", n), taught_vlm.budget)
    crop = preview(step.arguments["bbox_2d"], 1, ws)  # type: ignore[arg-type]
    assert crop is not None
    ws.views.append(crop)
    looks = Looks([], last=patchify(crop.pixels, taught_vlm.chat.spec))  # type: ignore[arg-type]
    budget = taught_vlm.budget
    side = ImageBudget(PROBE_PIXELS, min(budget.min_pixels, PROBE_PIXELS), budget.factor)
    tight = preview(pointer.tight_box(looks), 2, ws, side)
    assert tight is not None and got[0] is not None and np.array_equal(got[0], tight.pixels)
    assert tight.pixels.shape != crop.pixels.shape  # a smaller look than the crop the model saw
    pointer.read_tight(looks, tight.pixels)
    assert looks.reading is not None and trace.defect_type == looks.reading[0]
    assert trace.confidence == pytest.approx(trace.defect_score * looks.reading[1], abs=1e-5)
    # nothing more was shown, the answer is one turn, and the decision stays the decoder's
    assert len(trace.conversation.patches) == 2 and trace.steps[-1].text.count("\\boxed{") == 1
    monkeypatch.undo()
    loop.engine.pointer.tight = False  # type: ignore[attr-defined]
    before = loop.run([Inspection(frames_for("zoom", n), prompt)])[0]
    assert before.defect_score == pytest.approx(trace.defect_score, abs=1e-5)
    assert [s.arguments for s in before.steps] == [s.arguments for s in trace.steps]



def test_a_look_first_sequence_selects_the_looked_frame_that_peaks_highest_and_the_best_tile(
        taught_vlm: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = taught_vlm.tokenizer
    pointer = CellPointer(taught_vlm, rerank=8, look_first=True)
    naming = tok.encode("A ", add_special_tokens=False)[0]
    looks = Looks([], frames=[2, 3, 1, 4], images=1)  # the tiles' ranking
    assert pointer.probe_request(looks, [naming], operations=False) is None  # `--no-ops` answers
    assert CellPointer(taught_vlm, look_first=True).probe_request(looks, [naming]) is None  # no probes
    asked = pointer.probe_request(looks, [naming])
    assert asked == ([(0.0, 0.0, 1.0, 1.0)] * 2, FRAMES_PROBE)  # frames 1 and 3, each whole
    first = tok.encode(SELECT_SENTENCE.format(tiles="tiles 1 and 2"), add_special_tokens=False)[0]
    assert looks.queue == [first]  # written instead of the model's token before the turn stops
    assert pointer.probe_request(looks, [naming]) is None  # asked once
    # frame 3's own look peaks higher than frame 1's; the tiles' best other than it is frame 2
    frames = [np.full((56, 56, 3), level, np.uint8) for level in (40, 250)]
    monkeypatch.setattr(CellPointer, "_cell_maps", _brightness)
    looks.queue = []
    pointer.probed(looks, frames)
    assert looks.frames == [3, 2, 1, 4] and looks.selecting == [2, 3]
    written = str(tok.decode([first, *looks.queue]))
    assert written == ('Let me view tiles 2 and 3 up close.\n'
                       '<tool_call>{"name": "select_frames", '
                       '"arguments": {"target_frames": [2, 3]}}</tool_call>')


def test_a_look_first_sequence_with_probes_stops_for_its_frames_and_writes_its_selection_once(
        taught_vlm: VLM) -> None:
    seen: list[tuple[int, int]] = []
    engine = LocalEngine(taught_vlm, pointer=True, rerank=8, look_first=True)
    turns = engine.turns

    def recording(requests: Sequence[TurnRequest], timeout_s: float | None = None) -> list[TurnReply]:
        replies = turns(requests, timeout_s)
        seen.extend((len(r.probes), r.probe_image) for r in replies)
        return replies

    engine.turns = recording  # type: ignore[method-assign]
    prompt, n, _ = SCRIPTS["select"]
    loop = Loop(engine, LoopOptions(max_turn_tokens=96))
    trace = loop.run([Inspection(frames_for("select", n), prompt)])[0]
    assert seen[0] == (len(looked_frames(n)), FRAMES_PROBE)  # the first turn stopped at once for them
    first = trace.steps[0]
    assert first.text.startswith("Let me view tiles ") and first.text.count("Let me") == 1
    assert first.operation == "select_frames" and first.ok
    assert trace.steps[1].text.startswith(ZOOM_SENTENCE)


def test_a_verdict_sentence_names_the_type_its_answer_will_hold(taught_vlm: VLM) -> None:
    pointer = CellPointer(taught_vlm, rerank=8)
    tok = taught_vlm.tokenizer
    frame = run(taught_vlm, "zoom", pointer=True).conversation
    looks = pointer.looks(frame.patches[0], tuple(frame.grids[0]))
    reading, _ = pointer.read(looks)
    other = next(n for n in DEFECT_TYPES[1:] if n != reading)
    said = tok.encode(f"A {other}: up close", add_special_tokens=False)
    written = pointer.forced(looks, said[:1], said[1])
    assert written and tok.decode(said[:1] + written) == f"A {reading}"  # the type the answer will hold
    opened = tok.encode("A mark: \\boxed{", add_special_tokens=False)
    first = tok.encode(reading, add_special_tokens=False)[0]
    assert pointer.forced(looks, opened, first) == tok.encode(reading + "}", add_special_tokens=False)
    # the same when the turn stopped for a tight look right after the sentence's first token
    looks.verdict_open = said[0]
    assert pointer.forced(looks, [], said[1]) == written and looks.verdict_open is None
    # sentences that name no type are the model's own, and so is everything without answers
    for own in ("A mark: up close", "No marks: up close"):
        ids = tok.encode(own, add_special_tokens=False)
        assert pointer.forced(looks, ids[:1], ids[1]) == [], own
    assert CellPointer(taught_vlm, answers=False).forced(looks, said[:1], said[1]) == []


def test_a_verdict_after_a_grounded_crop_asks_for_its_tight_look_at_its_first_token(taught_vlm: VLM) -> None:
    pointer = CellPointer(taught_vlm, rerank=8)
    tok = taught_vlm.tokenizer
    frame = run(taught_vlm, "zoom", pointer=True).conversation
    looks = replace(pointer.looks(frame.patches[0], tuple(frame.grids[0])), images=2, crop_image=2)
    said = tok.encode("A crack: up close", add_special_tokens=False)
    asked = pointer.probe_request(looks, said[:1])
    assert asked == ([pointer.tight_box(looks)], 2)
    assert looks.verdict_open == said[0] and not looks.answer_open  # the sentence goes on after it
    opened = tok.encode("A crack: up close. \\boxed{", add_special_tokens=False)
    assert pointer.probe_request(looks, opened) is None  # one tight look per answer
    plain = replace(pointer.looks(frame.patches[0], tuple(frame.grids[0])), images=2, crop_image=2)
    assert pointer.probe_request(plain, tok.encode("No marks", add_special_tokens=False)[:1]) is None


def test_only_the_reranked_candidates_run_in_the_probe_dtype(taught_vlm: VLM,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tower = taught_vlm.model.model.visual
    calls: list[tuple[int, bool]] = []
    maps = tower.feature_maps
    monkeypatch.setattr(tower, "feature_maps", lambda images, backbone=None, probe=False:
                        calls.append((len(images), probe)) or maps(images, backbone, probe))
    monkeypatch.setattr(tower, "probe_dtype", torch.bfloat16)
    trace = run(taught_vlm, "zoom", pointer=True, rerank=8)
    assert trace.steps[0].operation == "crop_image_normalized" and trace.steps[0].ok
    # one pass over the 8 candidate crops in bfloat16; the frame and the crop shown in float32
    assert [c for c in calls if c[1]] == [(8, True)]
    assert sum(n for n, probe in calls if not probe) >= 2
