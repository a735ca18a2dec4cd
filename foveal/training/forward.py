"""One teacher-forced pass over whole conversations, shared by SFT and RL.

`collate` right-pads `Chunk`s into a batch with Qwen2.5-VL's 3D positions; `token_logits`
runs the decoder on it, with image tokens from the full vision tower or from backbone feature
maps computed earlier (SFT keeps the pre-trained backbone frozen and caches its maps; the
merger still trains). Targets are the next tokens where the chunk marks loss: assistant text
and its `<|im_end|>`, never tool output. `decision_weights` up-weights the few tokens that
decide an inspection (each assistant turn's first tokens: zoom or answer; the digits of a tool
call: where; the type inside `\\boxed{}`: what) against the prose around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from transformers import PreTrainedTokenizerBase

from foveal.model.chat import IMAGE, Chunk, positions
from foveal.model.loader import VLM
from foveal.model.pixels import PixelSpec
from foveal.model.vision import ConvVisionTower

IGNORE = -100


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L): next token where it carries loss, else IGNORE
    attention: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (3, B, L)
    image_mask: torch.Tensor  # (B, L) bool
    patches: list[npt.NDArray[np.float32]]
    grids: list[tuple[int, int, int]]
    weights: torch.Tensor | None = None  # (B, L): per-target loss weight (None: all 1)


def decision_weights(chunk: Chunk, tokenizer: PreTrainedTokenizerBase, weight: float,
                     first: int = 3) -> list[float]:
    """Per-token loss weight of `chunk`: `weight` for the first `first` tokens of every
    assistant turn (they decide zoom or answer), for tokens holding a digit inside a turn
    (coordinates, frame numbers) and for the answer inside `\\boxed{...}`; 1 elsewhere (tokens
    without loss are never counted)."""
    out = [1.0] * len(chunk)
    pieces = tokenizer.convert_ids_to_tokens(chunk.ids)
    run = 0
    boxed = False
    for i, (piece, loss) in enumerate(zip(pieces, chunk.loss, strict=True)):
        if not loss:
            run, boxed = 0, False
            continue
        text = str(piece)
        if run < first or boxed or any(c.isdigit() for c in text) or "boxed" in text:
            out[i] = weight
        if "boxed" in text:
            boxed = True
        elif "}" in text:
            boxed = False
        run += 1
    return out


def collate(chunks: Sequence[Chunk], pad_id: int, spec: PixelSpec = PixelSpec(),
            weights: Sequence[Sequence[float]] | None = None) -> Batch:
    """Right-padded batch of `chunks`; `spec` is the model's (its merge size sets the image
    positions); `weights` per chunk token (`decision_weights`) become per-target weights."""
    length = max(len(c) for c in chunks)
    b = len(chunks)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    pos = torch.zeros((3, b, length), dtype=torch.long)
    image_mask = torch.zeros((b, length), dtype=torch.bool)
    patches: list[npt.NDArray[np.float32]] = []
    grids: list[tuple[int, int, int]] = []
    target_weights = torch.zeros((b, length)) if weights is not None else None
    for i, chunk in enumerate(chunks):
        n = len(chunk)
        row = torch.tensor(chunk.ids)
        ids[i, :n] = row
        loss = torch.tensor(chunk.loss[1:], dtype=torch.bool)
        targets[i, : n - 1] = torch.where(loss, row[1:], torch.full_like(row[1:], IGNORE))
        if target_weights is not None and weights is not None:
            target_weights[i, : n - 1] = torch.tensor(list(weights[i])[1:], dtype=torch.float32)
        attention[i, :n] = 1
        p, _ = positions(chunk, 0, spec)
        pos[:, i, :n] = torch.from_numpy(p)
        image_mask[i, :n] = torch.tensor([t == IMAGE for t in chunk.types])
        patches += chunk.patches
        grids += chunk.grids
    return Batch(ids, targets, attention, pos, image_mask, patches, grids, target_weights)


def image_tokens(vlm: VLM, batch: Batch, maps: Sequence[torch.Tensor] | None = None) -> torch.Tensor | None:
    """(image tokens, D) for the batch: from cached backbone `maps` when given, else the tower."""
    visual = vlm.model.model.visual
    if maps is not None:
        assert isinstance(visual, ConvVisionTower)
        return visual.tokens([m.float() for m in maps])
    if not batch.patches:
        return None
    pixel_values = torch.from_numpy(np.concatenate(batch.patches))
    out = vlm.model.model.get_image_features(pixel_values, torch.tensor(batch.grids)).pooler_output
    return torch.cat(list(out))


def token_logits(vlm: VLM, batch: Batch, maps: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """(B, L, V) logits of the batch."""
    embeds = vlm.model.get_input_embeddings()(batch.ids)  # (B, L, D)
    features = image_tokens(vlm, batch, maps)
    if features is not None:
        embeds = embeds.masked_scatter(batch.image_mask.unsqueeze(-1), features.to(embeds.dtype))
    out = vlm.model.model.language_model(inputs_embeds=embeds, attention_mask=batch.attention,
                                         position_ids=batch.positions, use_cache=False)
    logits: torch.Tensor = vlm.model.lm_head(out.last_hidden_state)
    return logits


def sft_loss(logits: torch.Tensor, targets: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Token-level mean cross-entropy over the tokens that carry loss (weighted mean when
    `weights` are given)."""
    flat = logits.flatten(0, 1).float()  # (B*L, V)
    if weights is None:
        return torch.nn.functional.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE)
    each = torch.nn.functional.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE, reduction="none")
    w = weights.flatten() * (targets.flatten() != IGNORE)
    return (each * w).sum() / w.sum().clamp(min=1e-6)
