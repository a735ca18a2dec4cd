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

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from foveal.model.chat import IMAGE, Chunk
from foveal.model.loader import VLM
from foveal.model.vision import ConvVisionTower
from foveal.training.forward import IGNORE, collate

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
    same `groups` label share their common prefix (`prefix_length`), run once."""
    batch = collate(chunks, vlm.chat.pad, vlm.chat.spec)
    labels = list(dict.fromkeys(groups))
    owner = [labels.index(g) for g in groups]  # row -> prefix row
    members = [[b for b in range(len(chunks)) if groups[b] == label] for label in labels]
    shared = [prefix_length([chunks[b] for b in rows], [maps[b] for b in rows]) for rows in members]
    if min(shared) == 0:  # a prefix row without a real token would attend to nothing
        shared = [0] * len(shared)
    width = max(shared)  # (K, P) prefix rows, right-padded
    decoder = vlm.model.model.language_model
    cache, prefix_mask = None, torch.zeros((len(labels), 0), dtype=torch.long)
    if width:
        heads = [rows[0] for rows in members]
        prefix_mask = torch.tensor([[1] * n + [0] * (width - n) for n in shared])  # (K, P)
        features = _image_tokens(vlm, [(chunks[b], maps[b], slice(0, _images_before(chunks[b], n)))
                                       for b, n in zip(heads, shared, strict=True)])
        image_mask = batch.image_mask[heads, :width] & prefix_mask.bool()
        embeds = _embed(vlm, batch.ids[heads, :width], image_mask, features)
        cache = DynamicCache(config=vlm.model.config.get_text_config())
        decoder(inputs_embeds=embeds, attention_mask=prefix_mask,
                position_ids=batch.positions[:, heads, :width], cache=cache, use_cache=True)
        cache.batch_select_indices(torch.tensor(owner))
    starts = [shared[k] for k in owner]
    lengths = [len(c) - s for c, s in zip(chunks, starts, strict=True)]
    span = max(lengths)  # (B, S) each row's own tokens, right-padded
    ids = torch.full((len(chunks), span), vlm.chat.pad, dtype=torch.long)
    targets = torch.full((len(chunks), span), IGNORE, dtype=torch.long)
    positions = torch.zeros((3, len(chunks), span), dtype=torch.long)
    own_mask = torch.zeros((len(chunks), span), dtype=torch.long)
    image_mask = torch.zeros((len(chunks), span), dtype=torch.bool)
    for b, (s, n) in enumerate(zip(starts, lengths, strict=True)):
        ids[b, :n], targets[b, :n] = batch.ids[b, s:s + n], batch.targets[b, s:s + n]
        positions[:, b, :n], image_mask[b, :n] = batch.positions[:, b, s:s + n], batch.image_mask[b, s:s + n]
        own_mask[b, :n] = 1
    features = _image_tokens(vlm, [(c, m, slice(_images_before(c, s), None))
                                   for c, m, s in zip(chunks, maps, starts, strict=True)])
    embeds = _embed(vlm, ids, image_mask, features)
    attention = torch.cat([prefix_mask[owner], own_mask], dim=1)  # (B, P + S)
    hidden = decoder(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, cache=cache,
                     use_cache=cache is not None).last_hidden_state  # (B, S, D)
    wanted = targets != IGNORE  # (B, S)
    logits = vlm.model.lm_head(hidden[wanted]).float()  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets[wanted].unsqueeze(-1)).squeeze(-1)  # (N,)
    mask = batch.targets != IGNORE  # (B, L): the same tokens, in the same row-major order
    assert int(mask.sum()) == int(wanted.sum()), "a token with loss fell inside a shared prefix"
    return torch.zeros(mask.shape, dtype=picked.dtype).masked_scatter(mask, picked), mask
