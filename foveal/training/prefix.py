"""Teacher-forced log-probabilities of conversations that share a prompt, the prompt run once.

A query's G rollouts begin with the same tokens and pixels (system turn, the frame, the request,
the assistant header), most of each conversation. `logprobs` runs that common prefix once per
group, repeats its key/value cache for the group's rows, and runs only each row's own
continuation against it; the vocabulary projection runs only where the next token carries loss.
The result has the layout of `grpo.target_logprobs` over the whole conversations ((B, L), 0 where
no loss) and equals it within float rounding (tested), gradients included: they reach the
prefix through every row that reads it. The RL update and the rollout policy's scoring use it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from foveal.model.chat import IMAGE, Chunk
from foveal.model.loader import VLM
from foveal.model.vision import ConvVisionTower
from foveal.training.forward import IGNORE, Batch, collate

Maps = list[torch.Tensor] | None  # per image backbone maps of a chunk (None: encode its patches)


def prefix_length(chunks: Sequence[Chunk], maps: Sequence[Maps]) -> int:
    """How many leading tokens every chunk shares (same ids, same images) and no position in them
    needs a logit: it stops one token before the first token that carries loss, and before the
    first image that is not the same in every chunk (never inside an image).

    >>> a = Chunk([1, 2, 3, 4, 5], [0] * 5, [False] * 3 + [True] * 2)
    >>> prefix_length([a, Chunk([1, 2, 3, 9, 9], [0] * 5, [False] * 3 + [True] * 2)], [None, None])
    2
    """
    first = chunks[0]
    limit = min(c.loss.index(True) if True in c.loss else len(c) for c in chunks) - 1
    common = 0
    while common < limit and all(c.ids[common] == first.ids[common] and c.types[common] == first.types[common]
                                 for c in chunks[1:]):
        common += 1
    i, image = 0, 0
    while i < common:
        if first.types[i] != IMAGE:
            i += 1
            continue
        end = i
        while end < len(first) and first.types[end] == IMAGE:
            end += 1
        same = all(_same_image(first, maps[0], c, m, image) for c, m in zip(chunks, maps, strict=True))
        if end > common or not same:
            return i
        i, image = end, image + 1
    return max(0, common)


def _same_image(a: Chunk, a_maps: Maps, b: Chunk, b_maps: Maps, k: int) -> bool:
    if a_maps is not None and b_maps is not None:
        return a_maps[k] is b_maps[k] or bool(torch.equal(a_maps[k], b_maps[k]))
    if a.grids[k] != b.grids[k]:
        return False
    return a.patches[k] is b.patches[k] or np.array_equal(a.patches[k], b.patches[k])


def _images_before(chunk: Chunk, end: int) -> int:
    """Images whose tokens start before position `end`."""
    types = chunk.types[:end]
    return sum(1 for i, t in enumerate(types) if t == IMAGE and (i == 0 or types[i - 1] != IMAGE))


def _image_tokens(vlm: VLM, parts: Sequence[tuple[Chunk, Maps, slice]]) -> torch.Tensor | None:
    """(tokens, D) for the images `parts` select (a chunk, its maps, which of its images), in order."""
    visual = vlm.model.model.visual
    if all(m is not None for _, m, _ in parts):
        maps = [fmap.float() for _, m, which in parts for fmap in (m or [])[which]]
        if not maps:
            return None
        assert isinstance(visual, ConvVisionTower)
        return visual.tokens(maps)
    patches = [p for c, _, which in parts for p in c.patches[which]]
    if not patches:
        return None
    grids = [g for c, _, which in parts for g in c.grids[which]]
    out = vlm.model.model.get_image_features(torch.from_numpy(np.concatenate(patches)), torch.tensor(grids))
    return torch.cat(list(out.pooler_output))


def _embed(vlm: VLM, ids: torch.Tensor, image_mask: torch.Tensor, features: torch.Tensor | None
           ) -> torch.Tensor:
    embeds = vlm.model.get_input_embeddings()(ids)  # (B, L, D)
    if features is not None:
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))
    return embeds  # type: ignore[no-any-return]


def logprobs(vlm: VLM, chunks: Sequence[Chunk], maps: Sequence[Maps], groups: Sequence[int],
             temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) log-probability of each next token that carries loss (0 elsewhere) at the sampling
    temperature, and the (B, L) bool mask of those tokens, for right-padded `chunks`. Rows with the
    same `groups` label share their common prefix (`prefix_length`), run once; the rows' own
    tokens then run in buckets of similar length, so one long rollout does not pad the others."""
    batch = collate(chunks, vlm.chat.pad, vlm.chat.spec)
    labels = list(dict.fromkeys(groups))
    owner = [labels.index(g) for g in groups]  # row -> prefix row
    members = [[b for b in range(len(chunks)) if groups[b] == label] for label in labels]
    shared = [prefix_length([chunks[b] for b in rows], [maps[b] for b in rows]) for rows in members]
    if min(shared) == 0:  # a prefix row without a real token would attend to nothing
        shared = [0] * len(shared)
    layers, prefix_mask = _prefix_pass(vlm, batch, chunks, maps, [rows[0] for rows in members], shared)
    starts = [shared[k] for k in owner]
    lengths = [len(c) - s for c, s in zip(chunks, starts, strict=True)]
    order = sorted(range(len(chunks)), key=lambda b: lengths[b])
    picked: list[torch.Tensor] = [torch.zeros(0)] * len(chunks)
    for run in buckets([lengths[b] for b in order], BUCKET_OVERHEAD):
        rows = sorted((order[i] for i in run), key=lambda b: owner[b])
        cache = DynamicCache(ddp_cache_data=_repeat(layers, [owner[b] for b in rows])) if layers else None
        own = _own_pass(vlm, batch, [(b, starts[b], lengths[b]) for b in rows], [chunks[b] for b in rows],
                        [maps[b] for b in rows], prefix_mask[[owner[b] for b in rows]], cache, temperature)
        for b, values in zip(rows, own, strict=True):
            picked[b] = values
    mask = batch.targets != IGNORE  # (B, L): the same tokens, row by row in position order
    flat = torch.cat(picked)
    assert int(mask.sum()) == flat.numel(), "a token with loss fell inside a shared prefix"
    return torch.zeros(mask.shape, dtype=flat.dtype).masked_scatter(mask, flat), mask


BUCKET_OVERHEAD = 48  # a decoder call's fixed cost in row-tokens (~8 ms against ~0.2 ms, fwd+bwd, CPU)


def buckets(lengths: Sequence[int], overhead: int) -> list[range]:
    """Ascending `lengths` cut into consecutive runs that minimise the padded work,
    sum(len(run) * max(run) + overhead) (a small dynamic programme).

    >>> buckets([5, 5, 6, 100], 20)
    [range(0, 3), range(3, 4)]
    >>> buckets([5, 6, 7], 20)
    [range(0, 3)]
    """
    best = [0] + [2**62] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(lengths)
    while j:
        runs.append(range(cut[j], j))
        j = cut[j]
    return runs[::-1]


def _repeat(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], owners: Sequence[int]
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prefix rows repeated for rows whose (sorted) owners are `owners`. Expanded and
    concatenated rather than indexed: the gradient then sums each prefix's copies in a fixed
    order (an indexing backward accumulates them in whatever order the threads run)."""
    runs = [(o, len(list(same))) for o, same in itertools.groupby(owners)]
    return [(torch.cat([k[o:o + 1].expand(n, -1, -1, -1) for o, n in runs]),
             torch.cat([v[o:o + 1].expand(n, -1, -1, -1) for o, n in runs])) for k, v in layers]


def _prefix_pass(vlm: VLM, batch: Batch, chunks: Sequence[Chunk], maps: Sequence[Maps], heads: Sequence[int],
                 shared: Sequence[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Each group's prefix (the first `shared[k]` tokens of row `heads[k]`), right-padded into one
    (K, P) pass: its per-layer (K, H, P, D) keys and values and the (K, P) mask of real positions."""
    width = max(shared)
    if not width:
        return [], torch.zeros((len(heads), 0), dtype=torch.long)
    prefix_mask = torch.tensor([[1] * n + [0] * (width - n) for n in shared])  # (K, P)
    features = _image_tokens(vlm, [(chunks[b], maps[b], slice(0, _images_before(chunks[b], n)))
                                   for b, n in zip(heads, shared, strict=True)])
    image_mask = batch.image_mask[list(heads), :width] & prefix_mask.bool()
    embeds = _embed(vlm, batch.ids[list(heads), :width], image_mask, features)
    cache = DynamicCache(config=vlm.model.config.get_text_config())
    vlm.model.model.language_model(inputs_embeds=embeds, attention_mask=prefix_mask, cache=cache,
                                   position_ids=batch.positions[:, list(heads), :width], use_cache=True)
    layers = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        assert isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor)
        layers.append((keys, values))
    return layers, prefix_mask


def _own_pass(vlm: VLM, batch: Batch, spans: Sequence[tuple[int, int, int]], chunks: Sequence[Chunk],
              maps: Sequence[Maps], prefix_mask: torch.Tensor, cache: DynamicCache | None,
              temperature: float) -> list[torch.Tensor]:
    """The rows' own tokens (row b of `batch` from `start` for `length` tokens, per `spans`) after
    their prefixes in `cache`: per row, the log-probabilities of its loss tokens in order."""
    span = max(n for _, _, n in spans)  # (R, S), right-padded
    rows = len(spans)
    ids = torch.full((rows, span), vlm.chat.pad, dtype=torch.long)
    targets = torch.full((rows, span), IGNORE, dtype=torch.long)
    positions = torch.zeros((3, rows, span), dtype=torch.long)
    own_mask = torch.zeros((rows, span), dtype=torch.long)
    image_mask = torch.zeros((rows, span), dtype=torch.bool)
    for r, (b, s, n) in enumerate(spans):
        ids[r, :n], targets[r, :n] = batch.ids[b, s:s + n], batch.targets[b, s:s + n]
        positions[:, r, :n], image_mask[r, :n] = batch.positions[:, b, s:s + n], batch.image_mask[b, s:s + n]
        own_mask[r, :n] = 1
    features = _image_tokens(vlm, [(c, m, slice(_images_before(c, s), None))
                                   for c, m, (_, s, _) in zip(chunks, maps, spans, strict=True)])
    embeds = _embed(vlm, ids, image_mask, features)
    attention = torch.cat([prefix_mask, own_mask], dim=1)  # (R, P + S)
    hidden = vlm.model.model.language_model(inputs_embeds=embeds, attention_mask=attention, cache=cache,
                                            position_ids=positions, use_cache=cache is not None
                                            ).last_hidden_state  # (R, S, D)
    wanted = targets != IGNORE  # (R, S)
    logits = vlm.model.lm_head(hidden[wanted]).float()  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets[wanted].unsqueeze(-1)).squeeze(-1)  # (N,)
    return list(torch.split(picked, wanted.sum(dim=1).tolist()))
