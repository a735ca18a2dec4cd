"""One teacher-forced pass over whole conversations, shared by SFT and RL.

`collate` right-pads `Chunk`s into a batch with Qwen2.5-VL's 3D positions; `token_logits`
runs the decoder on it, with image tokens from the full vision tower or from backbone feature
maps computed earlier (SFT keeps the pre-trained backbone frozen and caches its maps; the
merger still trains). Targets are the next tokens where the chunk marks loss: assistant text
and its `<|im_end|>`, never tool output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from foveal.model.chat import IMAGE, Chunk, positions
from foveal.model.loader import VLM
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


def collate(chunks: Sequence[Chunk], pad_id: int) -> Batch:
    length = max(len(c) for c in chunks)
    b = len(chunks)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    pos = torch.zeros((3, b, length), dtype=torch.long)
    image_mask = torch.zeros((b, length), dtype=torch.bool)
    patches: list[npt.NDArray[np.float32]] = []
    grids: list[tuple[int, int, int]] = []
    for i, chunk in enumerate(chunks):
        n = len(chunk)
        row = torch.tensor(chunk.ids)
        ids[i, :n] = row
        loss = torch.tensor(chunk.loss[1:], dtype=torch.bool)
        targets[i, : n - 1] = torch.where(loss, row[1:], torch.full_like(row[1:], IGNORE))
        attention[i, :n] = 1
        p, _ = positions(chunk, 0)
        pos[:, i, :n] = torch.from_numpy(p)
        image_mask[i, :n] = torch.tensor([t == IMAGE for t in chunk.types])
        patches += chunk.patches
        grids += chunk.grids
    return Batch(ids, targets, attention, pos, image_mask, patches, grids)


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


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-level mean cross-entropy over the tokens that carry loss."""
    flat = logits.flatten(0, 1).float()  # (B*L, V)
    return torch.nn.functional.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE)
