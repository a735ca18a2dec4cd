"""Grounded zooms for compact checkpoints: the box of a crop comes from the model's own vision.

The decoder decides *whether* to zoom (and what to answer after); where the crop goes, a small
from-scratch decoder does not learn to write (measured: v6 writes one box for every image, v8b
a handful of memorised boxes, its first number right on 3 of 38 calls; `docs/model.md`). The
vision tower's cell head, trained in stage 0, reads where the whole view looks off better than
that (its peak cell's crop covers the defect on 84 % of easy, 52 % of hard and 12 % of tiny
FovealBench test defects). So when a compact model with a cell head opens a crop's box
(`"bbox_2d": [`), the engine writes the box: the `operations.look_box` of the next of the whole
view's most defect-like cells (the first crop the most defect-like, a second crop the runner-up),
then the call's end, `], "target_image": 1}}</tool_call>` (the whole frame, whose grid the cell
is on). The head's probabilities are the model's own; the decision to zoom, and the answer after
the crop, remain the decoder's.

It applies to single-image inspections, greedy and sampled alike. The tokens the engine writes
are flagged (`TurnReply.forced`) and the loop gives them no loss, so an RL rollout's box is not
trained as the policy's choice: its actions are the decision to zoom and the answers. Sequences
choose frames first and are left alone, and real Qwen2.5-VL checkpoints (no cell head) write
their own coordinates.
Tests: `pytest tests/reasoning/test_pointer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from foveal.model.loader import VLM
from foveal.operations import look_box

TRIGGER = '"bbox_2d": ['
CLOSE = '], "target_image": 1}}</tool_call>'  # the call's only valid ending on the whole frame
MAX_LOOKS = 8  # candidate cells kept per inspection, most defect-like first


@dataclass
class Looks:
    """One inspection's candidate boxes, most defect-like first, and the ones already written."""

    boxes: list[tuple[float, float, float, float]]
    used: int = 0
    queue: list[int] = field(default_factory=list)  # tokens still to write for the open box


class CellPointer:
    """Writes crop boxes from a compact tower's cell head (see the module docstring)."""

    def __init__(self, vlm: VLM) -> None:
        tower = vlm.model.model.visual
        if getattr(tower, "head", None) is None:
            raise ValueError("the model's vision tower has no cell head: nothing to point with")
        self.tower = tower
        self.tokenizer = vlm.tokenizer
        self.merge = int(tower.spatial_merge_size)
        vocab = self.tokenizer.get_vocab()
        # tokens whose text ends the trigger: only after one of them is the text checked
        self._closers = frozenset(i for i in vocab.values() if self._text([i]).endswith("["))

    @staticmethod
    def available(vlm: VLM) -> bool:
        return getattr(vlm.model.model.visual, "head", None) is not None

    @torch.inference_mode()
    def looks(self, patches: npt.NDArray[np.float32], grid: tuple[int, ...]) -> Looks:
        """The candidate boxes of one whole view, given as the chunk's patches and grid."""
        tower = self.tower
        pixel_values = torch.from_numpy(patches).to(tower.dtype)
        image = tower.images(pixel_values, torch.tensor([list(grid)]))[0]
        cells = tower.head(tower.backbone(image[None].to(tower.dtype)))  # (1, K, rows, cols)
        defect = 1.0 - torch.softmax(cells.float(), dim=1)[0, 0]  # (rows, cols)
        rows, cols = defect.shape
        boxes: list[tuple[float, float, float, float]] = []
        for index in torch.argsort(defect.flatten(), descending=True).tolist():
            box = look_box(rows, cols, index // cols, index % cols)
            if box not in boxes:
                boxes.append(box)
            if len(boxes) == MAX_LOOKS:
                break
        return Looks(boxes)

    def opens_box(self, generated: list[int]) -> bool:
        """Whether the turn's tokens so far end with the opening of a crop's box."""
        if not generated or generated[-1] not in self._closers:
            return False
        return self._text(generated[-8:]).endswith(TRIGGER)

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def box_tokens(self, looks: Looks) -> list[int]:
        """The tokens of the next unused candidate box and the call's end; marks it used
        (after the last candidate, the first again)."""
        box = looks.boxes[looks.used % len(looks.boxes)]
        looks.used += 1
        text = ", ".join(f"{round(v, 2)}" for v in box) + CLOSE
        return list(self.tokenizer.encode(text, add_special_tokens=False))
