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

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from foveal.domain import DEFECT_TYPES, NO_DEFECT, Box, Verdict
from foveal.model.chat import IMAGE, TEXT, Chunk, positions
from foveal.model.loader import VLM
from foveal.model.tokenizer import decode
from foveal.operations import (
    ERROR_PREFIX,
    ImageBudget,
    OperationResult,
    RGBImage,
    View,
    Workspace,
    execute,
    parse_answer,
    parse_tool_call,
)

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
    uncertain_below: float = 0.5  # answer probability under which the verdict is `uncertain`
    seed: int | None = None


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
    generated_tokens: int = 0
    conversation: Chunk = field(default_factory=Chunk)

    @property
    def used_operation(self) -> bool:
        return self.operations > 0


@dataclass
class _Row:
    item: Inspection
    ws: Workspace
    trace: Trace
    pending: Chunk | None
    mask: list[int] = field(default_factory=list)
    next_pos: int = 0
    turn_ids: list[int] = field(default_factory=list)
    turn_logprobs: list[float] = field(default_factory=list)
    turn_none: list[float] = field(default_factory=list)
    started: float = 0.0
    turn_started: float = 0.0
    forcing: bool = False
    decoding: bool = False
    done: bool = False


class Loop:
    """Runs inspections on one loaded model. Not thread-safe: one batch at a time."""

    def __init__(self, vlm: VLM, options: LoopOptions = LoopOptions(),
                 budget: ImageBudget | None = None) -> None:
        self.vlm = vlm
        self.fmt = vlm.chat
        self.options = options
        self.budget = budget or vlm.budget  # the model's processor budget by default
        self.generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
        self._first_ids: dict[str, int] = {}

    def first_id(self, name: str) -> int:
        if name not in self._first_ids:
            ids = self.fmt.tokenizer.encode(name, add_special_tokens=False)
            self._first_ids[name] = int(ids[0])
        return self._first_ids[name]

    @torch.inference_mode()
    def run(self, items: Sequence[Inspection]) -> list[Trace]:
        """Inspect `items` as one batch; returns one trace per item, in order."""
        started = time.perf_counter()
        rows = [self._start(item, started) for item in items]
        cache = DynamicCache(config=self.vlm.model.config.get_text_config())
        live = list(rows)
        while live:
            if not self.options.reuse_cache:
                cache = self._restart(live)
            logits = self._forward(live, cache)  # consumes prompts, tool results, forced `\boxed{`
            for b, row in enumerate(live):
                if row.forcing:
                    self._resolve_forced(row, logits[b])
            live, kept = self._prune(live, logits, cache)
            if not live or kept is None:  # kept is never None here: logits were not
                break
            self._decode_turn(live, cache, kept)
            for row in live:
                self._finish_turn(row)
            live, _ = self._prune(live, None, cache)
        return [row.trace for row in rows]

    def run_batched(self, items: Sequence[Inspection], batch_size: int = 8) -> list[Trace]:
        traces: list[Trace] = []
        for i in range(0, len(items), batch_size):
            traces += self.run(items[i:i + batch_size])
        return traces

    @staticmethod
    def _prune(live: list[_Row], logits: torch.Tensor | None, cache: DynamicCache
               ) -> tuple[list[_Row], torch.Tensor | None]:
        keep = [i for i, row in enumerate(live) if not row.done]
        if len(keep) == len(live):
            return live, logits
        if keep:
            cache.batch_select_indices(torch.tensor(keep))
        return [live[i] for i in keep], (logits[keep] if logits is not None else None)

    # -- set-up -------------------------------------------------------------------------------
    def _start(self, item: Inspection, started: float) -> _Row:
        ws = Workspace(item.frames, self.budget, self.options.max_images)
        prompt = self.fmt.prompt([ws.views[0].pixels], item.prompt)
        trace = Trace(item.item_id, conversation=Chunk().extend(prompt))
        return _Row(item, ws, trace, pending=prompt, started=started)

    def _restart(self, live: list[_Row]) -> DynamicCache:
        """Baseline without cache reuse: the whole conversation is encoded again this turn."""
        for row in live:
            row.pending, row.mask, row.next_pos = Chunk().extend(row.trace.conversation), [], 0
        return DynamicCache(config=self.vlm.model.config.get_text_config())

    # -- model calls ------------------------------------------------------------------------
    def _forward(self, live: list[_Row], cache: DynamicCache) -> torch.Tensor:
        """Append each row's pending chunk (rows without one get masked padding); (B, V) logits
        at each row's last real token."""
        chunks = [row.pending or Chunk() for row in live]
        length = max(1, *(len(c) for c in chunks))
        ids = torch.full((len(live), length), self.fmt.pad, dtype=torch.long)
        is_image = torch.zeros((len(live), length), dtype=torch.bool)
        pos = torch.zeros((3, len(live), length), dtype=torch.long)
        new_mask = torch.zeros((len(live), length), dtype=torch.long)
        last = torch.zeros(len(live), dtype=torch.long)
        patches, grids = [], []
        for b, (row, chunk) in enumerate(zip(live, chunks, strict=True)):
            n = len(chunk)
            if n:
                ids[b, :n] = torch.tensor(chunk.ids)
                is_image[b, :n] = torch.tensor([t == IMAGE for t in chunk.types])
                p, row.next_pos = positions(chunk, row.next_pos, self.fmt.spec)
                pos[:, b, :n] = torch.from_numpy(p)
                new_mask[b, :n] = 1
                patches += chunk.patches
                grids += chunk.grids
            pos[:, b, n:] = row.next_pos
            last[b] = max(n - 1, 0)
            row.mask += [1] * n + [0] * (length - n)
            row.pending = None
        embeds = self.vlm.model.get_input_embeddings()(ids)  # (B, L, D)
        if patches:
            pixel_values = torch.from_numpy(np.concatenate(patches)).to(embeds.dtype)
            vision = self.vlm.model.model.get_image_features(pixel_values, torch.tensor(grids))
            embeds[is_image] = torch.cat(list(vision.pooler_output)).to(embeds.dtype)
        mask = torch.tensor([row.mask for row in live], dtype=torch.long)
        out = self.vlm.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                                  cache=cache, use_cache=True)
        hidden = out.last_hidden_state[torch.arange(len(live)), last]  # (B, D)
        logits: torch.Tensor = self.vlm.model.lm_head(hidden).float()  # (B, V)
        return logits

    def _decode_turn(self, live: list[_Row], cache: DynamicCache, logits: torch.Tensor) -> None:
        """Generate every live row's turn in lock step until each has stopped."""
        options = self.options
        for row in live:
            row.decoding, row.turn_ids, row.turn_logprobs, row.turn_none = True, [], [], []
            row.turn_started = time.perf_counter()
        none_id = self.first_id(NO_DEFECT)
        while True:
            logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
            if options.temperature > 0:
                probs = torch.softmax(logits / options.temperature, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
            else:
                chosen = logits.argmax(dim=-1)
            any_left = False
            for b, row in enumerate(live):
                if not row.decoding:
                    continue
                token = int(chosen[b])
                row.turn_ids.append(token)
                row.turn_logprobs.append(float(logprobs[b, token]))
                row.turn_none.append(float(logprobs[b, none_id].exp()))
                total = len(row.mask) + 1
                if token in self.fmt.stop_ids or len(row.turn_ids) >= options.max_turn_tokens \
                        or total >= options.max_total_tokens:
                    row.decoding = False
                else:
                    row.pending = self.fmt.token(token, loss=True)
                    any_left = True
            if not any_left:
                return
            logits = self._forward(live, cache)

    # -- turn bookkeeping -----------------------------------------------------------------------
    def _finish_turn(self, row: _Row) -> None:
        tokens = row.turn_ids
        stopped = tokens[-1] if tokens else None
        body = tokens[:-1] if stopped in (self.fmt.im_end, self.fmt.pad) else tokens
        text = decode(self.fmt.tokenizer, body)
        step = Step(text=text, tokens=len(tokens),
                    latency_ms=(time.perf_counter() - row.turn_started) * 1000)
        row.trace.steps.append(step)
        row.trace.generated_tokens += len(tokens)
        row.trace.conversation.extend(Chunk(list(body), [TEXT] * len(body), [True] * len(body)))
        ended_turn = stopped in (self.fmt.im_end, self.fmt.pad)
        # the cache holds every generated token but the last one (the stop token is never fed)
        row.pending = Chunk() if ended_turn or not body else self.fmt.token(body[-1], loss=True)
        row.pending.extend(self.fmt.end(loss=True))
        row.trace.conversation.extend(self.fmt.end(loss=True))
        call = None if ended_turn else parse_tool_call(text)
        answer = parse_answer(text)
        if call is None and answer is not None:
            self._answer(row, body, answer)
        elif call is None or len(row.trace.steps) >= self.options.max_turns:
            self._force(row, "answer with \\boxed{...} now.")
        elif not self.options.allow_operations:
            self._force(row, "operations are disabled for this inspection; answer from the whole "
                             "image with \\boxed{...}.")
        elif row.trace.operations >= self.options.max_operations:
            self._force(row, f"the limit of {self.options.max_operations} operations is reached; "
                             "answer with \\boxed{...} now.")
        else:
            result = execute(text, row.ws)
            self._record(row, step, result)
            env = self.fmt.environment(result.message, [v.pixels for v in result.views])
            row.trace.conversation.extend(env)
            row.pending.extend(env)

    def _record(self, row: _Row, step: Step, result: OperationResult) -> None:
        row.trace.operations += 1
        row.trace.operation_errors += 0 if result.ok else 1
        step.operation, step.arguments, step.ok = result.operation, result.arguments, result.ok
        step.error, step.message, step.views = result.error, result.message, result.views
        if result.ok and result.box is not None:
            step.box, step.frame_index = result.box, result.views[0].frame_index
            row.trace.box = result.box
            row.trace.box_frame = result.views[0].frame_index if row.ws.is_sequence else None

    def _answer(self, row: _Row, body: list[int], answer: str) -> None:
        """Confidence and defect score from the generated answer tokens."""
        start = self._answer_start(body)
        trace = row.trace
        if start is None:
            trace.confidence, trace.defect_score = 0.0, 0.5
        else:
            end = self._answer_end(body, start)
            trace.confidence = float(np.exp(sum(row.turn_logprobs[start:end])))
            trace.defect_score = 1.0 - row.turn_none[start]
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
        assert row.pending is not None
        row.pending.extend(env)
        row.forcing = True

    def _resolve_forced(self, row: _Row, logits: torch.Tensor) -> None:
        names = list(row.item.taxonomy)
        ids = torch.tensor([self.first_id(n) for n in names])
        probs = torch.softmax(logits[ids], dim=-1)
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
