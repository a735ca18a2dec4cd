"""The chat format as token chunks: what training encodes in one go and the reasoning loop
appends turn by turn to a cached conversation.

Qwen2.5-VL's format: `<|im_start|>role\\n ... <|im_end|>\\n`, each image as `<|vision_start|>`,
one `<|image_pad|>` per 28 px cell, `<|vision_end|>`. A `Chunk` carries token ids, which tokens
are image placeholders, which carry loss (assistant text and its `<|im_end|>` only), and the
patchified images. `positions` gives Qwen2.5-VL's 3D rotary positions for a chunk that starts at
a known position, so a conversation can grow chunk by chunk without recomputing what came before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedTokenizerBase

from foveal.model import tokenizer as tk
from foveal.model.pixels import Grid, PixelSpec, grid_of, patchify
from foveal.reasoning.prompts import SYSTEM_PROMPT

TEXT, IMAGE = 0, 1


@dataclass
class Chunk:
    ids: list[int] = field(default_factory=list)
    types: list[int] = field(default_factory=list)  # TEXT or IMAGE per token
    loss: list[bool] = field(default_factory=list)
    # per image (n, 1176); empty when the format was made with patches=False (remote models)
    patches: list[npt.NDArray[np.float32]] = field(default_factory=list)
    grids: list[Grid] = field(default_factory=list)
    # per image, the (h, w, 3) uint8 view the patches came from: what a remote model receives
    images: list[npt.NDArray[np.uint8]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, other: Chunk) -> Chunk:
        self.ids += other.ids
        self.types += other.types
        self.loss += other.loss
        self.patches += other.patches
        self.grids += other.grids
        self.images += other.images
        return self


class ChatFormat:
    """Encodes turns for one tokenizer (the compact model's or a real Qwen2.5-VL's)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, spec: PixelSpec = PixelSpec(),
                 system_prompt: str = SYSTEM_PROMPT, patches: bool = True) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        # False for a client of a remote model (Triton), which sends the uint8 views and never
        # reads patches: chunks then carry the views and grids only (no float copy per image)
        self.patches = patches
        self.system_prompt = system_prompt
        found = {name: tokenizer.convert_tokens_to_ids(name) for name in
                 (tk.IM_START, tk.IM_END, tk.PAD, tk.IMAGE_PAD, tk.VISION_START, tk.VISION_END,
                  tk.TOOL_CLOSE)}
        ids = {name: i for name, i in found.items() if isinstance(i, int) and i != tokenizer.unk_token_id}
        missing = [name for name in found if name not in ids]
        if missing:
            raise ValueError(f"the tokenizer lacks the Qwen chat tokens {missing}")
        self.im_end, self.pad, self.image_pad = ids[tk.IM_END], ids[tk.PAD], ids[tk.IMAGE_PAD]
        self.vision_start, self.vision_end = ids[tk.VISION_START], ids[tk.VISION_END]
        self.im_start, self.tool_close = ids[tk.IM_START], ids[tk.TOOL_CLOSE]
        self.stop_ids = frozenset({self.im_end, self.tool_close, self.pad})

    def text(self, text: str, loss: bool = False) -> Chunk:
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        return Chunk(list(ids), [TEXT] * len(ids), [loss] * len(ids))

    def token(self, token_id: int, loss: bool = False) -> Chunk:
        return Chunk([token_id], [TEXT], [loss])

    def tokens(self, token_ids: list[int]) -> Chunk:
        return Chunk(list(token_ids), [TEXT] * len(token_ids), [False] * len(token_ids))

    def image(self, view: npt.NDArray[np.uint8]) -> Chunk:
        if self.patches:
            patches, grid = patchify(view, self.spec)
        else:
            patches, grid = None, grid_of(view, self.spec)
        n = self.spec.tokens(grid)
        return Chunk([self.vision_start, *[self.image_pad] * n, self.vision_end],
                     [TEXT, *[IMAGE] * n, TEXT], [False] * (n + 2),
                     [] if patches is None else [patches], [grid], [view])

    def header(self, role: str) -> Chunk:
        return self.token(self.im_start).extend(self.text(f"{role}\n"))

    def end(self, loss: bool = False) -> Chunk:
        """`<|im_end|>` (carrying loss when it closes an assistant turn) and the newline."""
        return self.token(self.im_end, loss).extend(self.text("\n"))

    def prompt(self, views: Sequence[npt.NDArray[np.uint8]], prompt: str) -> Chunk:
        """System turn, the user's images and request, and the assistant header."""
        chunk = self.header("system").extend(self.text(self.system_prompt)).extend(self.end())
        chunk.extend(self.header("user"))
        for view in views:
            chunk.extend(self.image(view))
        return chunk.extend(self.text(prompt)).extend(self.end()).extend(self.header("assistant"))

    def assistant(self, text: str, loss: bool) -> Chunk:
        """A whole assistant turn as trained: its text and `<|im_end|>` carry `loss`."""
        return self.text(text, loss).extend(self.end(loss))

    def environment(self, message: str, views: Sequence[npt.NDArray[np.uint8]]) -> Chunk:
        """The environment's answer to an operation, then the next assistant header."""
        chunk = self.header("user").extend(self.text(message))
        for view in views:
            chunk.extend(self.image(view))
        return chunk.extend(self.end()).extend(self.header("assistant"))


def positions(chunk: Chunk, start: int, spec: PixelSpec = PixelSpec()) -> tuple[npt.NDArray[np.int64], int]:
    """Qwen2.5-VL's (3, len) rotary positions of `chunk` when it starts at `start`, and the
    position after it. Text advances by one per token; an image's tokens sit at (start, start +
    row, start + col) and advance the position by max(rows, cols), as transformers' get_rope_index."""
    out = np.zeros((3, len(chunk)), dtype=np.int64)
    pos, i, image = start, 0, 0
    while i < len(chunk):
        if chunk.types[i] == TEXT:
            out[:, i] = pos
            pos, i = pos + 1, i + 1
            continue
        _, gh, gw = chunk.grids[image]
        rows, cols = gh // spec.merge, gw // spec.merge
        rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        n = rows * cols
        out[0, i:i + n] = pos
        out[1, i:i + n] = pos + rr.reshape(-1)
        out[2, i:i + n] = pos + cc.reshape(-1)
        pos, i, image = pos + max(rows, cols), i + n, image + 1
    return out, pos
