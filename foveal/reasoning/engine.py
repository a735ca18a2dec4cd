"""The model step of the reasoning loop, behind one small interface: append a chunk of a
conversation to its key/value cache, then generate a turn. `LocalEngine` runs it in this process
(eval, predict, RL, and the Triton model itself); `foveal.serving.triton_engine.TritonEngine`
sends the same requests to Triton, where a `LocalEngine` keeps every conversation's cache.

A conversation is a *session* with an id. Each turn appends only the tokens the model has not
seen (the environment's message and images, or the prompt at the start) at their 3D rotary
positions, so nothing is encoded twice. Sessions are batched per call: their caches are stacked
(left-padded, masked) into one batch, and after the turn each session keeps only its real
positions again, so sessions of any length and age can share a batch. New sessions of a call that
start with the same chunk (an RL query's G rollouts: one prompt, one frame) are encoded once and
their cache copied to each before they sample apart (`share_prefill`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache

from foveal.errors import FovealError
from foveal.model.chat import IMAGE, ChatFormat, Chunk, positions
from foveal.model.loader import VLM
from foveal.operations import ImageBudget, crop_of
from foveal.reasoning.drafts import NgramDrafter
from foveal.reasoning.pointer import CellPointer, Looks, probe_budget

# tokens drafted per greedy step (`foveal.reasoning.drafts`); 0: one decoder pass per token
DRAFT_TOKENS = 8


class EngineUnavailable(FovealError):
    """The model server cannot be reached or its model is not ready (try again later)."""


class EngineError(FovealError):
    """The model server failed a request it accepted (a bug or a broken model, not the input)."""


@dataclass(frozen=True)
class TurnRequest:
    session: int  # conversation id (Triton: the sequence's correlation id)
    chunk: Chunk  # tokens (and images) the model has not seen yet
    max_new_tokens: int  # 0: only append the chunk and report the next-token distribution
    stop_ids: frozenset[int]  # generation of the turn ends at any of these (not fed back)
    watch: tuple[int, ...] = ()  # token ids whose log-probabilities are reported at each step
    temperature: float = 0.0  # 0: greedy
    restart: bool = False  # forget the session's cache first (the re-encoding baseline)
    end: bool = False  # forget the session after this turn
    frames: int = 1  # frames of the inspection (> 1: a sequence, its first image their overview)
    # the crops of the candidate looks a reply asked for (`TurnReply.probes`), in its order, at
    # full resolution (None: that crop cannot be made); the turn then goes on with the best
    probes: tuple[npt.NDArray[np.uint8] | None, ...] = ()
    operations: bool = True  # the inspection may call operations (False: `--no-ops`)
    # the inspection's full-resolution frame, sent once (with the session's first turn) by a
    # client that lets the engine cut the pointer's probes itself: the turn then goes on through
    # them instead of stopping for them (`TurnReply.probes`), a round trip less per probe
    source: npt.NDArray[np.uint8] | None = None
    # per image of the chunk, the region of `source` it shows (left, top, right, bottom in whole
    # pixels; None: not a view of the source, such as a sequence's overview). Probes on an image
    # whose region the engine does not know are asked for as before
    regions: tuple[tuple[int, int, int, int] | None, ...] = ()
    # a grounded answer's type is sampled from the type reader at `temperature` instead of taken
    # as its most likely (an RL rollout whose type read is an action: `foveal train rl --train
    # reader`); a local engine only, the model host does not carry it
    sample_type: bool = False


@dataclass
class TurnReply:
    tokens: list[int] = field(default_factory=list)  # generated; all but the last are now cached
    logprobs: list[float] = field(default_factory=list)  # of each generated token
    # per generated token, whether the engine wrote it instead of the model (a grounded zoom's
    # box, `foveal.reasoning.pointer`); empty when none was
    forced: list[bool] = field(default_factory=list)
    # a grounded answer's type was written: the view head's probability of that type, and (a
    # local engine only) the pooled features the head read it from (`foveal train readout`)
    answer_prob: float | None = None
    answer_features: npt.NDArray[np.float32] | None = None
    # the turn stopped where a grounded box opens: these candidate boxes (normalized to image
    # `probe_image`, 1-based; `pointer.FRAMES_PROBE`: box k is the whole of the k-th frame of
    # `pointer.looked_frames`) want to be seen at full resolution; the next request sends their
    # crops as `TurnRequest.probes` and the turn goes on (`foveal.reasoning.pointer`)
    probes: list[tuple[float, float, float, float]] = field(default_factory=list)
    probe_image: int = 0
    # (max(1, len(tokens)), len(watch)): log-probabilities of the watched ids at each step; with
    # max_new_tokens == 0, one row: the distribution after the appended chunk
    watch: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((1, 0), np.float32))
    model_ms: float = 0.0
    model: ModelRef | None = None  # the model that answered, as its server names it


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


class ImageFeatures(Protocol):
    """Decoder tokens of images: (sum of patches, 1176) and grids (k, 3) -> (sum of tokens, D)."""

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor: ...


class Engine(Protocol):
    """What the loop needs from a model: its chat format, pixel budget, identity, and turns."""

    chat: ChatFormat
    budget: ImageBudget

    @property
    def model(self) -> ModelRef: ...

    def turns(self, requests: Sequence[TurnRequest], timeout_s: float | None = None) -> list[TurnReply]: ...

    def release(self, sessions: Iterable[int]) -> None: ...

    def ready(self, timeout_s: float = 1.0) -> bool:
        """Whether the model server says its model is ready; `EngineUnavailable` when the server
        gave no answer within `timeout_s`."""
        ...


@dataclass
class _Source:
    """A session's full-resolution frame and, per image shown so far, the region of it that the
    image shows (None: unknown): what the engine cuts the pointer's probes from."""

    frame: npt.NDArray[np.uint8]
    regions: list[tuple[int, int, int, int] | None]


@dataclass
class _Session:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (1, H, L, D) keys and values
    next_pos: int  # rotary position after the last cached token
    touched: float  # time.monotonic() of the last turn

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[2]) if self.layers else 0


class LocalEngine:
    """Runs turns on a loaded model in this process. Thread-safe: calls run one at a time."""

    def __init__(self, vlm: VLM, seed: int | None = None, idle_timeout_s: float | None = None,
                 vision: ImageFeatures | None = None, share_prefill: bool = True,
                 pointer: bool | None = None, rerank: int | None = None,
                 look_first: bool | None = None, draft_tokens: int = DRAFT_TOKENS) -> None:
        self.vlm = vlm
        # greedy turns check drafted tokens several per pass; what they say is unchanged
        self.drafter = NgramDrafter(length=draft_tokens) if draft_tokens > 0 else None
        # grounded zooms (`foveal.reasoning.pointer`): None = the checkpoint's choice (its
        # foveal.json `pointer`), which needs a tower with a cell head
        wanted = bool(vlm.meta.get("pointer", False)) if pointer is None else pointer
        if wanted and not CellPointer.available(vlm):
            if pointer:
                raise ValueError(f"{vlm.name} has no cell head in its vision tower: it cannot point")
            wanted = False
        # candidate looks seen at full resolution before a box is written: None = the
        # checkpoint's choice (its foveal.json `rerank`, 0 when absent)
        probes = int(vlm.meta.get("rerank", 0)) if rerank is None else rerank
        # every verdict comes after a look up close: None = the checkpoint's choice
        # (its foveal.json `look_first`, off when absent)
        look = bool(vlm.meta.get("look_first", False)) if look_first is None else look_first
        self.pointer: CellPointer | None = (CellPointer(vlm, rerank=probes, look_first=look)
                                            if wanted else None)
        self.looks: dict[int, Looks] = {}  # per session: the pointer's candidate boxes
        self.sources: dict[int, _Source] = {}  # per session that sent its frame (`TurnRequest.source`)
        self.share_prefill = share_prefill  # False: every row encodes its own chunk (the baseline)
        self.vision = vision  # None: the model's own (torch) vision tower
        self.chat = vlm.chat
        self.budget = vlm.budget
        self.idle_timeout_s = idle_timeout_s
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if self.pointer is not None:
            self.pointer.generator = self.generator
        self.sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()

    @property
    def model(self) -> ModelRef:
        return ModelRef(self.vlm.name, self.vlm.version)

    def release(self, sessions: Iterable[int]) -> None:
        with self._lock:
            for session in sessions:
                self._forget(session)

    def _forget(self, session: int) -> None:
        self.sessions.pop(session, None)
        self.looks.pop(session, None)
        self.sources.pop(session, None)

    def ready(self, timeout_s: float = 1.0) -> bool:
        return True

    def evict_idle(self) -> int:
        """Forget sessions untouched for longer than the idle timeout (clients that vanished)."""
        if self.idle_timeout_s is None:
            return 0
        cutoff = time.monotonic() - self.idle_timeout_s
        stale = [s for s, state in list(self.sessions.items()) if state.touched < cutoff]
        # and the frames of sessions whose first turn failed (never stored): called between turns
        stale += [s for s in list(self.sources) if s not in self.sessions]
        self.release(stale)
        return len(stale)

    def turns(self, requests: Sequence[TurnRequest], timeout_s: float | None = None) -> list[TurnReply]:
        """One turn for each request, as one batch. `timeout_s` is for remote engines."""
        with self._lock:
            return self._turns(requests)

    @torch.inference_mode()
    def _turns(self, requests: Sequence[TurnRequest]) -> list[TurnReply]:
        if self.pointer is None:
            return self._run_turns(requests)
        self.pointer.forget()
        try:
            return self._run_turns(requests)
        finally:
            self.pointer.forget()

    def _run_turns(self, requests: Sequence[TurnRequest]) -> list[TurnReply]:
        started = time.perf_counter()
        for r in requests:
            if r.restart:
                self.sessions.pop(r.session, None)
            self._keep_source(r)
        states = [self.sessions.get(r.session) or _Session([], 0, 0.0) for r in requests]
        looks = self._point(requests, states)
        for r, pointing in zip(requests, looks, strict=True):
            if r.probes and pointing is not None and self.pointer is not None:
                self.pointer.probed(pointing, r.probes)
        source = _twins(requests, states) if self.share_prefill else list(range(len(requests)))
        unique = sorted(set(source))  # the rows that encode their chunk
        batch = _Batch.stack([states[i] for i in unique], self._empty_cache(), self.device)
        logits = self._append(batch, [requests[i].chunk for i in unique])  # (U, V)
        if len(unique) < len(requests):  # each twin takes a copy of its source's cache
            at = {i: k for k, i in enumerate(unique)}
            rows = [at[i] for i in source]
            batch.select(rows)
            logits = logits[rows]  # (B, V)
        replies = [TurnReply() for _ in requests]
        generating = [r.max_new_tokens > 0 for r in requests]
        # per row, the tokens the engine wrote after the one it fed first, in the same step: a
        # forced box, frames or answer is appended as one chunk (one decoder pass instead of one
        # per token; a box is 12 tokens) and their log-probabilities are read off that pass
        written: list[list[int]] = [[] for _ in requests]
        # per greedy row, the drafted tokens fed after its token in the same pass
        # (`foveal.reasoning.drafts`): proposed this step, then checked one per step
        proposed: list[list[int]] = [[] for _ in requests]
        drafts: list[_Draft | None] = [None for _ in requests]
        while True:
            logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
            chosen = self._choose(logits, requests)
            feed: list[Chunk] = []
            ahead: dict[int, torch.Tensor] = {}  # rows whose next logits their draft holds
            for b, (r, reply) in enumerate(zip(requests, replies, strict=True)):
                feed.append(Chunk())
                watched = logprobs[b, list(r.watch)].numpy() if r.watch else np.zeros(0, np.float32)
                if not generating[b]:
                    if not reply.tokens:  # append-only request: one row, after the chunk
                        reply.watch = watched[None].astype(np.float32)
                    continue
                token = int(chosen[b])
                pointing = looks[b]
                probing = False
                cut_here = False  # the probes were cut from the session's frame: the turn goes on
                if pointing is not None and not pointing.queue and self.pointer is not None:
                    asked = self.pointer.probe_request(pointing, [*reply.tokens, token], r.operations)
                    crops = None if asked is None else self._probes(r.session, *asked)
                    if crops is not None:
                        # as a resumed turn would: rank the candidates (their box is written
                        # from the next token on) or read the answer's type on the tight look
                        self.pointer.probed(pointing, crops)
                        pointing.answer_open, pointing.verdict_open, cut_here = False, None, True
                    elif asked is not None:
                        # a box or an answer opens: end the turn here and ask for the crops of
                        # the candidate looks, or of the tight look the type is read on
                        probing = True
                        reply.probes, reply.probe_image = asked
                    elif not cut_here:
                        pointing.queue = self.pointer.forced(pointing, reply.tokens, token, r.operations)
                        if pointing.answered is not None:
                            reply.answer_prob, pointing.answered = pointing.answered, None
                            if pointing.read_features is not None:  # what that type was read from
                                reply.answer_features = pointing.read_features.numpy()
                forced = pointing is not None and bool(pointing.queue) and not cut_here
                if forced:  # the pointer writes the box, the frames or the answer's type
                    assert pointing is not None
                    token = pointing.queue.pop(0)
                    # the rest of what it writes, up to a stop token or the turn's token cap
                    room = r.max_new_tokens - len(reply.tokens) - 1
                    rest = pointing.queue[:max(0, room)]
                    ends = next((k for k, t in enumerate(rest) if t in r.stop_ids), None)
                    written[b] = rest[:ends + 1] if ends is not None else rest
                    pointing.queue = pointing.queue[len(written[b]):] if ends is None else []
                reply.tokens.append(token)
                if forced or reply.forced:
                    reply.forced += [False] * (len(reply.tokens) - 1 - len(reply.forced)) + [forced]
                reply.logprobs.append(float(logprobs[b, token]))
                reply.watch = np.concatenate([reply.watch, watched[None]]) if len(reply.tokens) > 1 \
                    else watched[None].astype(np.float32)
                run = [token, *written[b]]
                reply.tokens += written[b]
                reply.forced += [True] * len(written[b])
                last = run[-1]
                stops = probing or last in r.stop_ids or len(reply.tokens) >= r.max_new_tokens
                draft, drafts[b] = drafts[b], None
                if draft is not None:
                    # the token is already in the cache when it is the draft's next one and
                    # nothing else happened to it here; otherwise the draft's rest leaves it
                    kept = token == draft.tokens[0] and not forced and not probing and not cut_here
                    if kept and not stops:
                        ahead[b] = draft.logits[0]
                        if len(draft.tokens) > 1:
                            drafts[b] = _Draft(draft.tokens[1:], draft.logits[1:], draft.columns[1:])
                        continue
                    batch.drop(b, draft.columns)
                    if kept:  # the draft's token ends the turn: out of the cache, as a last token is
                        generating[b] = False
                        continue
                if stops:
                    generating[b] = False
                    run = run[:-1]  # a turn's last token is not fed back
                elif self.drafter is not None and r.temperature <= 0 and not written[b] \
                        and not (pointing is not None and pointing.queue):
                    proposed[b] = self.drafter.propose(reply.tokens, r.max_new_tokens - len(reply.tokens) - 1)
                    run += proposed[b]
                if run:
                    feed[b] = self.chat.tokens(run)
            if not any(len(c) for c in feed):
                if not ahead:
                    break
                for b, row in ahead.items():
                    logits[b] = row
                continue
            start = batch.columns
            if not any(written) and not any(proposed):
                logits = self._append(batch, feed)
                for b, row in ahead.items():
                    logits[b] = row
                continue
            every = self._append(batch, feed, every=True)  # (B, L, V)
            logits = every[:, 0].clone()
            for b, row in ahead.items():
                logits[b] = row
            for b, guess in enumerate(proposed):
                if guess:  # fed after the row's token: logits after each, to check them by
                    drafts[b] = _Draft(guess, list(every[b, 1:1 + len(guess)]),
                                       list(range(start + 1, start + 1 + len(guess))))
                    proposed[b] = []
            for b, extra in enumerate(written):
                if not extra:
                    continue
                steps = torch.log_softmax(every[b, :len(extra)], dim=-1)  # what each was read after
                r, reply = requests[b], replies[b]
                for k, t in enumerate(extra):
                    reply.logprobs.append(float(steps[k, t]))
                seen = steps[:, list(r.watch)].numpy() if r.watch else np.zeros((len(extra), 0), np.float32)
                reply.watch = np.concatenate([reply.watch, seen.astype(np.float32)])
                if generating[b]:
                    logits[b] = every[b, len(extra)]
                written[b] = []
        if self.drafter is not None:
            for r, reply in zip(requests, replies, strict=True):
                if r.temperature <= 0 and reply.tokens:
                    self.drafter.learn(reply.tokens)
        now = time.monotonic()
        for r, state in zip(requests, batch.split(), strict=True):
            if r.end:
                self._forget(r.session)
            else:
                self.sessions[r.session] = _Session(state.layers, state.next_pos, now)
        elapsed_ms = (time.perf_counter() - started) * 1000
        ref = self.model
        for reply in replies:
            reply.model_ms, reply.model = elapsed_ms, ref
        return replies

    def source_frame(self, session: int) -> npt.NDArray[np.uint8] | None:
        """The full-resolution frame a session sent (`TurnRequest.source`), if any."""
        source = self.sources.get(session)
        return None if source is None else source.frame

    def _keep_source(self, r: TurnRequest) -> None:
        """Keep a session's frame and the regions its images show (a restart resends them all)."""
        if r.source is not None:
            self.sources[r.session] = _Source(r.source, [])
        source = self.sources.get(r.session)
        if source is None:
            return
        if r.restart:
            source.regions = []
        shown = list(r.regions[:len(r.chunk.grids)])
        source.regions += shown + [None] * (len(r.chunk.grids) - len(shown))

    def _probes(self, session: int, boxes: Sequence[tuple[float, float, float, float]], image: int
                ) -> list[npt.NDArray[np.uint8] | None] | None:
        """The crops of the pointer's probes (`boxes` on image `image`, 1-based), cut here from the
        session's frame as the loop would cut them; None when the session sent no frame or the
        image's region is unknown (then the turn stops and asks for them)."""
        source = self.sources.get(session)
        if source is None or not 1 <= image <= len(source.regions):
            return None
        region = source.regions[image - 1]
        if region is None:
            return None
        budget = probe_budget(self.budget)
        crops = [crop_of(box, source.frame, region, 0, budget) for box in boxes]
        return [None if isinstance(c, str) else c.pixels for c in crops]

    def _point(self, requests: Sequence[TurnRequest], states: Sequence[_Session]) -> list[Looks | None]:
        """Per row, the pointer's state when it writes this row's boxes or frames: rows of
        sessions that started with exactly one image (a frame, or a sequence's overview); a new
        session's candidates are read from that image here, shared by rows with the same image
        (an RL query's G rollouts)."""
        if self.pointer is None:
            return [None] * len(requests)
        out: list[Looks | None] = []
        fresh: dict[int, Looks] = {}
        for r, state in zip(requests, states, strict=True):
            known = self.looks.get(r.session)
            if known is not None and r.restart:  # the whole conversation again (the re-encoding
                # baseline): the same inspection, whose new images are the last ones
                self.pointer.shown(known, r.chunk.patches[known.images:],
                                   [tuple(g) for g in r.chunk.grids[known.images:]])
            elif not (state.length or state.next_pos):  # a new session
                self.looks.pop(r.session, None)
                if len(r.chunk.patches) == 1:
                    key = id(r.chunk.patches[0])
                    if key not in fresh:
                        patches, grid = r.chunk.patches[0], tuple(r.chunk.grids[0])
                        fresh[key] = self.pointer.frame_looks(patches, grid, r.frames) if r.frames > 1 \
                            else self.pointer.looks(patches, grid)
                    self.looks[r.session] = Looks(list(fresh[key].boxes), frames=list(fresh[key].frames),
                                                  images=1, last=fresh[key].last,
                                                  sample=r.temperature if r.sample_type else 0.0)
            elif known is not None:
                self.pointer.shown(known, r.chunk.patches, [tuple(g) for g in r.chunk.grids])
            found = self.looks.get(r.session)
            out.append(found)
        return out

    def _empty_cache(self) -> DynamicCache:
        return DynamicCache(config=self.vlm.model.config.get_text_config())

    def _choose(self, logits: torch.Tensor, requests: Sequence[TurnRequest]) -> torch.Tensor:
        """Greedy for rows at temperature 0, sampled for the others."""
        chosen = logits.argmax(dim=-1)
        temps = torch.tensor([r.temperature for r in requests], dtype=logits.dtype)
        hot = temps > 0
        if bool(hot.any()):
            probs = torch.softmax(logits[hot] / temps[hot, None], dim=-1)
            chosen[hot] = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        return chosen

    def _image_tokens(self, patches: list[npt.NDArray[np.float32]], grids: Sequence[Sequence[int]],
                      dtype: torch.dtype) -> torch.Tensor:
        """The decoder's image tokens of the images of a batch's chunks, in order."""
        if self.vision is None and self.pointer is not None:  # one backbone pass per image, shared
            maps = self.pointer.backbone_maps(patches, [tuple(g) for g in grids])
            shared: torch.Tensor = self.pointer.tower.tokens(maps)
            return shared
        model, device = self.vlm.model, self.device
        pixel_values = torch.from_numpy(np.concatenate(patches)).to(device, dtype)
        grid_thw = torch.tensor([list(g) for g in grids])
        if self.vision is not None:
            return self.vision(pixel_values, grid_thw)
        features = model.model.get_image_features(pixel_values, grid_thw.to(device))
        return torch.cat(list(features.pooler_output))

    def _append(self, batch: _Batch, chunks: Sequence[Chunk], every: bool = False) -> torch.Tensor:
        """Append each row's chunk (rows without one get masked padding); (B, V) logits at each
        row's last real token, or with `every` (B, L, V) logits at each position of the chunks."""
        model, fmt = self.vlm.model, self.chat
        rows = len(chunks)
        length = max(1, *(len(c) for c in chunks))
        ids = torch.full((rows, length), fmt.pad, dtype=torch.long)
        is_image = torch.zeros((rows, length), dtype=torch.bool)
        pos = torch.zeros((3, rows, length), dtype=torch.long)
        new_mask = torch.zeros((rows, length), dtype=torch.bool)
        last = torch.zeros(rows, dtype=torch.long)
        patches, grids = [], []
        for b, chunk in enumerate(chunks):
            n = len(chunk)
            if n:
                ids[b, :n] = torch.tensor(chunk.ids)
                is_image[b, :n] = torch.tensor([t == IMAGE for t in chunk.types])
                p, batch.next_pos[b] = positions(chunk, batch.next_pos[b], fmt.spec)
                pos[:, b, :n] = torch.from_numpy(p)
                new_mask[b, :n] = True
                patches += chunk.patches
                grids += chunk.grids
                last[b] = n - 1
            else:
                last[b] = -1  # nothing new: the row's logits are not used
            pos[:, b, n:] = batch.next_pos[b]
        device = self.device
        embeds = model.get_input_embeddings()(ids.to(device))  # (B, L, D)
        if patches:
            tokens = self._image_tokens(patches, grids, embeds.dtype)
            embeds[is_image.to(device)] = tokens.to(device, embeds.dtype)
        batch.mask = torch.cat([batch.mask, new_mask.to(device)], dim=1)
        # no padding anywhere (one row, or rows of one length): the causal mask alone, which
        # saves building a padded one every pass (~0.5 ms of a ~4 ms pass on two cores)
        mask = None if bool(batch.mask.all()) else batch.mask.long()
        out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                         position_ids=pos.to(device), cache=batch.cache, use_cache=True)
        if every:
            return model.lm_head(out.last_hidden_state).float().cpu()  # type: ignore[no-any-return]
        at = last.clamp(min=0).to(device)
        hidden = out.last_hidden_state[torch.arange(rows, device=device), at]  # (B, D)
        logits: torch.Tensor = model.lm_head(hidden).float().cpu()  # (B, V)
        return logits

    @property
    def device(self) -> torch.device:
        return next(self.vlm.model.parameters()).device


def _twins(requests: Sequence[TurnRequest], states: Sequence[_Session]) -> list[int]:
    """For each row, the first row whose encoding it can share (itself if none): both start new
    sessions with the same chunk, images included."""
    seen: dict[tuple[int, ...], list[int]] = {}
    out = list(range(len(requests)))
    for b, (r, state) in enumerate(zip(requests, states, strict=True)):
        if state.length or state.next_pos:
            continue
        candidates = seen.setdefault(tuple(r.chunk.ids), [])
        twin = next((c for c in candidates if _same_images(requests[c].chunk, r.chunk)), None)
        if twin is None:
            candidates.append(b)
        else:
            out[b] = twin
    return out


def _same_images(a: Chunk, b: Chunk) -> bool:
    return a.types == b.types and a.grids == b.grids and len(a.patches) == len(b.patches) and all(
        p is q or np.array_equal(p, q) for p, q in zip(a.patches, b.patches, strict=True))


@dataclass
class _Draft:
    """A row's drafted tokens still to be checked, each in the cache at its column, with the
    logits the pass gave after it."""

    tokens: list[int]
    logits: list[torch.Tensor]
    columns: list[int]


@dataclass
class _Batch:
    """Sessions stacked into one cache: row b is left-padded by `pad[b]` masked positions."""

    cache: DynamicCache
    mask: torch.Tensor  # (B, L) bool: which cached positions are real
    next_pos: list[int]

    @classmethod
    def stack(cls, states: Sequence[_Session], empty: DynamicCache, device: torch.device) -> _Batch:
        longest = max(s.length for s in states)
        mask = torch.zeros((len(states), longest), dtype=torch.bool, device=device)
        for b, s in enumerate(states):
            mask[b, longest - s.length:] = True
        if longest == 0:
            return cls(empty, mask, [s.next_pos for s in states])
        like = next(s for s in states if s.length).layers
        layers = []
        for i, (k0, v0) in enumerate(like):
            keys, values = [], []
            for s in states:
                k, v = s.layers[i] if s.length else (k0[:, :, :0], v0[:, :, :0])
                pad = longest - s.length
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        return cls(DynamicCache(ddp_cache_data=layers), mask, [s.next_pos for s in states])

    @property
    def columns(self) -> int:
        """Cached positions per row, padding included."""
        return int(self.mask.shape[1])

    def drop(self, row: int, columns: Sequence[int]) -> None:
        """Take a row's tokens at these columns (the last it was fed) out of its conversation:
        masked, or cut off when they end a one-row batch; the row's next token takes the
        position of the first."""
        if not columns:
            return
        self.next_pos[row] -= len(columns)
        first = min(columns)
        if self.mask.shape[0] == 1 and list(columns) == list(range(first, self.columns)):
            self.cache.crop(first - self.columns)  # transformers: minus the tokens to remove
            self.mask = self.mask[:, :first]
        else:
            self.mask[row, list(columns)] = False

    def select(self, rows: Sequence[int]) -> None:
        """Keep (and repeat) the given rows, in that order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = [self.next_pos[i] for i in rows]

    def split(self) -> list[_Session]:
        """Each row's real positions only, as its own session again."""
        out = []
        cached: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in self.cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
                raise TypeError(f"cannot split a {type(layer).__name__} cache layer")
            cached.append((keys, values))
        for b in range(self.mask.shape[0]):
            keep = (self.mask[b, :cached[0][0].shape[2]] if cached else self.mask[b, :0]).to(self.mask.device)
            layers = [(k[b:b + 1, :, keep].clone(), v[b:b + 1, :, keep].clone()) for k, v in cached]
            out.append(_Session(layers, self.next_pos[b], 0.0))
        return out
