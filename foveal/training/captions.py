"""Caption examples: short answers that only the image can decide, mixed into SFT.

The template trajectories are long and mostly prose the model can learn without looking; twice
(v1, v2) the decoder learned that prose and the answer prior and never read the image tokens
(dev defect-score AUROC 0.50). A caption is the connector-alignment step of LLaVA-style training
on our own labels (the "short captions" stage 0 may use): one view, one question, a few words
whose every token depends on the pixels: "A scratch at the upper left." or "No defect.". Views
are cut by the operations code, as in inspection: the whole frame (skipped for tiny defects,
which it cannot show), a zoom on the defect and a zoom elsewhere, each captioned from the
defect mask inside the view's region of the original frame. No model, no I/O.
"""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt

from foveal.domain import NO_DEFECT
from foveal.model.chat import ChatFormat, Chunk
from foveal.operations import CROP, ImageBudget, RGBImage, View, Workspace, execute
from foveal.plant.dataset import Label
from foveal.training.trajectories import crop_box, location, tool_call

WHOLE_PROMPT = "Caption this view: which defect does it show, and where?"
ZOOM_PROMPT = "Caption this crop: which defect does it show?"
NO_DEFECT_CAPTION = "No defect."


def shows_defect(mask: npt.NDArray[np.bool_] | None, view: View) -> bool:
    """Whether the view's region of the original frame holds a defect pixel of `mask`."""
    if mask is None:
        return False
    left, top, right, bottom = view.region
    return bool(mask[top:bottom, left:right].any())


def caption(label: Label, view: View, mask: npt.NDArray[np.bool_] | None, whole: bool) -> str:
    """The caption of one view: the type (and, for the whole frame, where), or `No defect.`.

    >>> m = np.zeros((100, 100), bool); m[10:14, 10:20] = True
    >>> label = Label(id="x", image="x.png", product="pcb", width=100, height=100, defect_type="pit",
    ...               bbox=(0.1, 0.1, 0.2, 0.14))
    >>> px = np.zeros((56, 56, 3), np.uint8)
    >>> caption(label, View(px, (0, 0, 100, 100), 0, "frame"), m, whole=True)
    'A pit at the upper left.'
    >>> caption(label, View(px, (50, 50, 100, 100), 0, "crop"), m, whole=False)
    'No defect.'
    """
    if label.defect_type == NO_DEFECT or not shows_defect(mask, view):
        return NO_DEFECT_CAPTION
    if whole and label.bbox is not None:
        return f"A {label.defect_type} at the {location(label.bbox)}."
    return f"A {label.defect_type}."


def caption_chunks(label: Label, frames: list[RGBImage], mask: npt.NDArray[np.bool_] | None, fmt: ChatFormat,
                   budget: ImageBudget, rng: random.Random) -> list[Chunk]:
    """Up to three caption conversations of a single-image item (none for sequences)."""
    if label.image is None or not frames:
        return []
    ws = Workspace(frames[:1], budget)
    views: list[tuple[View, bool]] = []
    if label.difficulty != "tiny":
        views.append((ws.views[0], True))
    boxes = [crop_box(label.bbox)] if label.bbox is not None else []
    side = rng.uniform(0.1, 0.3)
    x, y = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
    boxes.append((round(x, 2), round(y, 2), round(x + side, 2), round(y + side, 2)))
    for box in boxes:
        result = execute(tool_call(CROP, {"bbox_2d": list(box), "target_image": 1}), ws)
        if result.ok:
            views.append((result.views[0], False))
    chunks = []
    for view, whole in views:
        chunk = fmt.prompt([view.pixels], WHOLE_PROMPT if whole else ZOOM_PROMPT)
        chunks.append(chunk.extend(fmt.assistant(caption(label, view, mask, whole), True)))
    return chunks
