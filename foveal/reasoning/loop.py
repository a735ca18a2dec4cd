"""The multi-turn reasoning loop: generate, execute the operation on the full-resolution frame,
show the result, repeat, answer. One module used by eval, predict, RL rollouts and the service.

Many inspections run as one batch. The conversation's key/value cache is kept across turns: each
turn appends only the new tokens (the environment's message and images) at their 3D rotary
positions, instead of re-encoding the conversation (`reuse_cache=False` does that, for the
benchmark). Generation of a turn stops at `</tool_call>` or `<|im_end|>`; limits (operations,
images, tokens, turns) end with a forced answer: the loop writes `\\boxed{` itself and reads
the model's distribution over the taxonomy. Confidence comes from the answer tokens'
probabilities; the defect score is 1 - P(none) at the answer slot.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from foveal.domain import DEFECT_TYPES, NO_DEFECT, Box, Verdict
from foveal.errors import FovealError
from foveal.model.chat import TEXT, Chunk
from foveal.model.loader import VLM
from foveal.model.tokenizer import decode
from foveal.operations import (
    ERROR_PREFIX,
    ImageBudget,
    OperationResult,
    RGBImage,
    View,
    Workspace,
    each_image,
    execute,
    parse_answer,
    parse_tool_call,
    preview,
    resize_to_budget,
)
from foveal.reasoning.engine import DRAFT_TOKENS, Engine, LocalEngine, ModelRef, TurnReply, TurnRequest
from foveal.reasoning.pointer import FRAMES_PROBE, looked_frames, probe_budget

BOXED = "\\boxed{"


@dataclass(frozen=True)
class LoopOptions:
    max_operations: int = 4
    max_images: int = 16
    max_turn_tokens: int = 96
    max_total_tokens: int = 4096
    max_turns: int = 6
    allow_operations: bool = True
    reuse_cache: bool = True
    temperature: float = 0.0  # 0: greedy (inspection); > 0: sampling (RL rollouts)
    # with temperature > 0: a grounded answer's type is sampled from the type reader too (an RL
    # rollout whose type read is an action); a loaded `VLM` only
    sample_type: bool = False
    uncertain_below: float = 0.5  # answer probability under which the verdict is `uncertain`
    seed: int | None = None
    # grounded zooms of compact checkpoints (`foveal.reasoning.pointer`); None: the checkpoint's
    # choice. Only for a loaded `VLM`: a remote engine's server makes that choice
    pointer: bool | None = None
    # candidate looks the pointer sees at full resolution before it writes a box (0: none);
    # None: the checkpoint's choice (its foveal.json `rerank`). Only for a loaded `VLM`, too
    rerank: int | None = None
    # every verdict comes after a look up close (`foveal.reasoning.pointer`); None: the
    # checkpoint's choice (its foveal.json `look_first`). Only for a loaded `VLM`, too
    look_first: bool | None = None
    # a single frame goes to the engine with the first turn, and each image's region of it with
    # the image, so that a grounded pointer cuts its probes there and a turn goes on through
    # them (over Triton: two model calls per zoom instead of four, for the raw frame sent once,
    # `FOVEAL_REASONER_SHIP_FRAME`); False: the turn stops for them and the loop cuts them, a
    # round trip each (sequences always do)
    ship_frame: bool = True
    # frames of more pixels than this keep the round trips (None: any size): the model host
    # holds each live inspection's frame, so the service bounds what that can cost
    ship_max_pixels: int | None = None
    # tokens drafted per greedy step and checked in one decoder pass (`foveal.reasoning.drafts`;
    # the same answers in fewer passes); 0: one pass per token. Only for a loaded `VLM`
    draft_tokens: int = DRAFT_TOKENS


@dataclass(frozen=True)
class Inspection:
    frames: Sequence[RGBImage]  # one full-resolution frame, or 2..16 frames of a sequence
    prompt: str
    taxonomy: tuple[str, ...] = DEFECT_TYPES
    item_id: str = ""


@dataclass
class Step:
    """One assistant turn and what the environment did with it."""

    text: str
    operation: str | None = None
    arguments: dict[str, object] | None = None
    ok: bool | None = None
    error: str | None = None
    message: str | None = None
    views: tuple[View, ...] = ()
    box: Box | None = None
    frame_index: int | None = None
    tokens: int = 0
    latency_ms: float = 0.0


@dataclass
class Trace:
    """An inspection's outcome and its full trace. `conversation` holds every token (generated
    ones marked in `loss`) and image, ready for a training forward pass (RL)."""

    item_id: str
    verdict: Verdict = Verdict.UNCERTAIN
    defect_type: str | None = None
    confidence: float = 0.0
    defect_score: float = 0.5
    box: Box | None = None
    box_frame: int | None = None
    steps: list[Step] = field(default_factory=list)
    operations: int = 0
    operation_errors: int = 0
    forced_answer: bool = False
    latency_ms: float = 0.0
    model_ms: float = 0.0  # in the engine (batched: the batch's time)
    operations_ms: float = 0.0
    generated_tokens: int = 0
    model: ModelRef | None = None  # the model that answered, as its server names it
    conversation: Chunk = field(default_factory=Chunk)
    # a grounded answer on a local engine: what the view head read its type from (`TurnReply`)
    answer_features: npt.NDArray[np.float32] | None = None

    @property
    def used_operation(self) -> bool:
        return self.operations > 0


@dataclass
class _Row:
    item: Inspection
    ws: Workspace
    trace: Trace
    session: int
    pending: Chunk
    started: float = 0.0
    forcing: bool = False
    done: bool = False
    ended: bool = False  # the engine has forgotten the session
    partial: TurnReply | None = None  # a turn that stopped to ask for its candidates' crops
    probes: tuple[RGBImage | None, ...] = ()  # those crops, for the next request
    shipped: bool = False  # the frame went to the engine (`LoopOptions.ship_frame`)


class DeadlineExceeded(FovealError):
    """The inspection did not finish before its deadline."""


class Loop:
    """Runs inspections on one model: a loaded `VLM` (in this process) or any `Engine` (Triton).
    Not thread-safe: one batch at a time per loop."""

    def __init__(self, model: VLM | Engine, options: LoopOptions = LoopOptions(),
                 budget: ImageBudget | None = None) -> None:
        self.engine: Engine = model if not isinstance(model, VLM) else LocalEngine(
            model, seed=options.seed, pointer=options.pointer, rerank=options.rerank,
            look_first=options.look_first, draft_tokens=options.draft_tokens)
        self.fmt = self.engine.chat
        self.options = options
        self.budget = budget or self.engine.budget  # the model's processor budget by default
        self._first_ids: dict[str, int] = {}

    def first_id(self, name: str) -> int:
        if name not in self._first_ids:
            ids = self.fmt.tokenizer.encode(name, add_special_tokens=False)
            self._first_ids[name] = int(ids[0])
        return self._first_ids[name]

    def run(self, items: Sequence[Inspection], deadline: float | None = None) -> list[Trace]:
        """Inspect `items` as one batch; one trace per item, in order. `deadline` (a
        `time.monotonic()` value) bounds the whole batch: past it, `DeadlineExceeded`."""
        started = time.perf_counter()
        firsts: dict[tuple[int, str], tuple[Workspace, Chunk]] = {}
        rows = [self._start(item, started, firsts) for item in items]
        live = list(rows)
        try:
            while live:
                replies = self.engine.turns([self._request(row) for row in live], _remaining(deadline))
                for row, reply in zip(live, replies, strict=True):
                    row.trace.model_ms += reply.model_ms
                    row.trace.model = reply.model or row.trace.model
                    if row.forcing:
                        self._resolve_forced(row, reply)
                    elif reply.probes:
                        self._probe(row, reply)
                    else:
                        if row.partial is not None:
                            reply, row.partial = _joined(row.partial, reply), None
                        self._finish_turn(row, reply)
                live = [row for row in live if not row.done]
        finally:
            self.engine.release([row.session for row in rows if not row.ended])
        return [row.trace for row in rows]

    def run_batched(self, items: Sequence[Inspection], batch_size: int = 8) -> list[Trace]:
        traces: list[Trace] = []
        for i in range(0, len(items), batch_size):
            traces += self.run(items[i:i + batch_size])
        return traces

    # -- set-up -------------------------------------------------------------------------------
    def _start(self, item: Inspection, started: float, firsts: dict[tuple[int, str], tuple[Workspace, Chunk]]
               ) -> _Row:
        """The row of an inspection. Copies of one inspection (the same frames object and prompt,
        as an RL query's G rollouts) share its first view and prompt, pixels included, so the
        engine encodes that prompt once and the rollouts' backbone maps are computed once."""
        key = (id(item.frames), item.prompt)
        if key in firsts:
            first, prompt = firsts[key]
            ws = copy.copy(first)
            ws.views = list(first.views[:1])
        else:
            ws = Workspace(item.frames, self.budget, self.options.max_images)
            prompt = self.fmt.prompt([ws.views[0].pixels], item.prompt)
            firsts[key] = ws, prompt
        trace = Trace(item.item_id, conversation=Chunk().extend(prompt))
        return _Row(item, ws, trace, session=secrets.randbits(63), pending=Chunk().extend(prompt),
                    started=started)

    def _request(self, row: _Row) -> TurnRequest:
        """The row's next turn: append what the model has not seen, then generate (or, when an
        answer is forced, read the taxonomy's distribution at `\\boxed{`)."""
        options = self.options
        restart = not options.reuse_cache
        chunk = Chunk().extend(row.trace.conversation) if restart else row.pending
        row.pending = Chunk()
        source: RGBImage | None = None
        regions: tuple[tuple[int, int, int, int] | None, ...] = ()
        frame = row.item.frames[0]
        small = options.ship_max_pixels is None or frame.shape[0] * frame.shape[1] <= options.ship_max_pixels
        if options.ship_frame and small and not row.ws.is_sequence:
            shown = len(chunk.grids)  # the chunk's images are the last views (a remote chat: no patches)
            regions = tuple(v.region for v in row.ws.views[len(row.ws.views) - shown:]) if shown else ()
            if not row.shipped:
                source, row.shipped = frame, True
        probes, row.probes = row.probes, ()
        so_far = len(row.partial.tokens) if row.partial is not None else 0
        if restart and row.partial is not None:  # the turn so far is not in the conversation yet
            chunk.extend(Chunk(list(row.partial.tokens), [TEXT] * so_far, [True] * so_far))
        if row.forcing:
            watch = tuple(self.first_id(n) for n in row.item.taxonomy)
            row.ended = True
            return TurnRequest(row.session, chunk, 0, self.fmt.stop_ids, watch, restart=restart, end=True,
                               frames=len(row.item.frames), source=source, regions=regions)
        room = options.max_total_tokens - len(row.trace.conversation) - so_far
        return TurnRequest(row.session, chunk, max(1, min(options.max_turn_tokens - so_far, room)),
                           self.fmt.stop_ids, (self.first_id(NO_DEFECT),), options.temperature,
                           restart=restart, frames=len(row.item.frames), probes=probes,
                           operations=options.allow_operations, source=source, regions=regions,
                           sample_type=options.sample_type)

    def _probe(self, row: _Row, reply: TurnReply) -> None:
        """The turn stopped where the engine is about to write a grounded box: crop its candidate
        looks from the full-resolution frame (nothing is shown to the model) for the next request,
        which goes on with the turn."""
        began = time.perf_counter()
        row.partial = reply if row.partial is None else _joined(row.partial, reply)
        budget = probe_budget(self.budget)
        if reply.probe_image == FRAMES_PROBE:  # a sequence's frames, each whole
            looked = looked_frames(len(row.ws.frames))[:len(reply.probes)]
            row.probes = tuple(each_image(lambda f: resize_to_budget(row.ws.frames[f - 1], budget), looked))
        else:
            crops = [preview(box, reply.probe_image, row.ws, budget) for box in reply.probes]
            row.probes = tuple(None if view is None else view.pixels for view in crops)
        row.pending = self.fmt.token(reply.tokens[-1], loss=True)  # generated, not yet fed
        row.trace.operations_ms += (time.perf_counter() - began) * 1000

    # -- turn bookkeeping -----------------------------------------------------------------------
    def _finish_turn(self, row: _Row, reply: TurnReply) -> None:
        tokens = reply.tokens
        stopped = tokens[-1] if tokens else None
        body = tokens[:-1] if stopped in (self.fmt.im_end, self.fmt.pad) else tokens
        text = decode(self.fmt.tokenizer, body)
        step = Step(text=text, tokens=len(tokens), latency_ms=reply.model_ms)
        row.trace.steps.append(step)
        row.trace.generated_tokens += len(tokens)
        # tokens the engine wrote for the model (a grounded zoom's box) are not the model's choice
        own = [not f for f in reply.forced[:len(body)]] + [True] * (len(body) - len(reply.forced))
        start = self._answer_start(body) if BOXED in text else None  # where the answer begins
        if start is not None and start < len(own) and not own[start]:
            # a grounded answer: that there is a defect was the policy's choice, which type the
            # head's, so its first token is trained (as the decision) and the rest is not
            own[start] = True
        row.trace.conversation.extend(Chunk(list(body), [TEXT] * len(body), own))
        ended_turn = stopped in (self.fmt.im_end, self.fmt.pad)
        # the cache holds every generated token but the last one (the stop token is never fed)
        row.pending = Chunk() if ended_turn or not body else self.fmt.token(body[-1], loss=True)
        row.pending.extend(self.fmt.end(loss=True))
        row.trace.conversation.extend(self.fmt.end(loss=True))
        call = None if ended_turn else parse_tool_call(text)
        answer = parse_answer(text)
        if call is None and answer is not None:
            self._answer(row, body, reply, answer, start)
        elif call is None or len(row.trace.steps) >= self.options.max_turns:
            self._force(row, "answer with \\boxed{...} now.")
        elif not self.options.allow_operations:
            self._force(row, "operations are disabled for this inspection; answer from the whole "
                             "image with \\boxed{...}.")
        elif row.trace.operations >= self.options.max_operations:
            self._force(row, f"the limit of {self.options.max_operations} operations is reached; "
                             "answer with \\boxed{...} now.")
        else:
            began = time.perf_counter()
            result = execute(text, row.ws)
            self._record(row, step, result)
            env = self.fmt.environment(result.message, [v.pixels for v in result.views])
            row.trace.conversation.extend(env)
            row.pending.extend(env)
            spent_ms = (time.perf_counter() - began) * 1000
            step.latency_ms += spent_ms
            row.trace.operations_ms += spent_ms

    def _record(self, row: _Row, step: Step, result: OperationResult) -> None:
        row.trace.operations += 1
        row.trace.operation_errors += 0 if result.ok else 1
        step.operation, step.arguments, step.ok = result.operation, result.arguments, result.ok
        step.error, step.message, step.views = result.error, result.message, result.views
        if result.ok and result.box is not None:
            step.box, step.frame_index = result.box, result.views[0].frame_index
            row.trace.box = result.box
            row.trace.box_frame = result.views[0].frame_index if row.ws.is_sequence else None

    def _answer(self, row: _Row, body: list[int], reply: TurnReply, answer: str, start: int | None) -> None:
        """Confidence and defect score from the generated answer tokens."""
        trace = row.trace
        if start is None:
            trace.confidence, trace.defect_score = 0.0, 0.5
        else:
            end = self._answer_end(body, start)
            trace.defect_score = 1.0 - float(np.exp(reply.watch[start, 0]))
            if reply.answer_prob is not None and start < len(reply.forced) and reply.forced[start]:
                # a grounded answer (`foveal.reasoning.pointer`): the decoder's probability that
                # there is a defect times the view head's probability of the type it read
                trace.confidence = trace.defect_score * reply.answer_prob
                trace.answer_features = reply.answer_features
            else:
                trace.confidence = float(np.exp(sum(reply.logprobs[start:end])))
        self._conclude(row, answer)

    def _answer_start(self, body: list[int]) -> int | None:
        """Index of the first token after the last `\\boxed{` of the turn."""
        text = ""
        pieces = []
        for token in body:
            text += decode(self.fmt.tokenizer, [token])
            pieces.append(len(text))
        cut = text.rfind(BOXED)
        if cut < 0:
            return None
        marker_end = cut + len(BOXED)
        for i, end in enumerate(pieces):
            if end > marker_end:
                return i
        return None

    def _answer_end(self, body: list[int], start: int) -> int:
        for i in range(start, len(body)):
            if "}" in decode(self.fmt.tokenizer, [body[i]]):
                return i if i > start else i + 1
        return len(body)

    def _force(self, row: _Row, why: str) -> None:
        """Ask for the answer: the environment says why, `\\boxed{` is written for the model, and
        the next forward pass (with the rest of the batch) lets the taxonomy compete."""
        env = self.fmt.environment(ERROR_PREFIX + why, []).extend(self.fmt.text(BOXED))
        row.trace.conversation.extend(env)
        row.pending.extend(env)
        row.forcing = True

    def _resolve_forced(self, row: _Row, reply: TurnReply) -> None:
        """The taxonomy's first tokens compete at `\\boxed{`: softmax over their log-probabilities."""
        names = list(row.item.taxonomy)
        scores = reply.watch[0].astype(np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        best = int(probs.argmax())
        trace = row.trace
        trace.forced_answer = True
        trace.confidence = float(probs[best])
        trace.defect_score = 1.0 - float(probs[names.index(NO_DEFECT)]) if NO_DEFECT in names else 0.5
        answer_ids = self.fmt.tokenizer.encode(names[best] + "}", add_special_tokens=False)
        trace.conversation.extend(Chunk(list(answer_ids), [TEXT] * len(answer_ids), [True] * len(answer_ids)))
        self._conclude(row, names[best])

    def _conclude(self, row: _Row, answer: str) -> None:
        trace = row.trace
        trace.defect_type = answer
        if answer not in row.item.taxonomy or trace.confidence < self.options.uncertain_below:
            trace.verdict = Verdict.UNCERTAIN
        else:
            trace.verdict = Verdict.OK if answer == NO_DEFECT else Verdict.DEFECT
        trace.latency_ms = (time.perf_counter() - row.started) * 1000
        row.done = True


def _joined(first: TurnReply, then: TurnReply) -> TurnReply:
    """One turn's reply from its part before a stop for probes and the part after it."""
    forced = (first.forced + [False] * (len(first.tokens) - len(first.forced)) + then.forced) \
        if first.forced or then.forced else []
    return TurnReply(tokens=first.tokens + then.tokens, logprobs=first.logprobs + then.logprobs,
                     forced=forced,
                     answer_prob=then.answer_prob if then.answer_prob is not None else first.answer_prob,
                     answer_features=then.answer_features if then.answer_features is not None
                     else first.answer_features,
                     watch=np.concatenate([first.watch, then.watch]), model_ms=first.model_ms + then.model_ms,
                     model=then.model or first.model)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the inspection's deadline passed")
    return left
