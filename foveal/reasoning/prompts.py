"""The words the model is given: the system prompt that describes the two operations (Pixel
Reasoner's tools) and the inspection prompt, which may name the product and the line's defect
types or stay generic. Training trajectories and inspection use these same functions."""

from __future__ import annotations

from collections.abc import Sequence

from foveal.domain import NO_DEFECT

# the one sentence every zoom of a single frame's first turn opens with: the trajectories teach
# it (`foveal.training.trajectories`) and a look-first pointer writes it (`foveal.reasoning.pointer`)
ZOOM_SENTENCE = "Let me zoom in for a closer look."
# a look-first sequence's first turn, before its `select_frames` call ("tiles 3 and 7"): the
# pointer writes it and the trajectories of kind `seq_look` / `seq_look_none` teach it
SELECT_SENTENCE = "Let me view {tiles} up close."

SYSTEM_PROMPT = (
    "You are an industrial visual inspector. You may call a tool inside <tool_call></tool_call>: "
    '{"name": "crop_image_normalized", "arguments": {"bbox_2d": [x1, y1, x2, y2], "target_image": k}} '
    "zooms into a box (normalized to [0, 1]) of image k in its original pixels; "
    '{"name": "select_frames", "arguments": {"target_frames": [i, j]}} shows chosen frames of a '
    "sequence. Answer with \\boxed{type}, or \\boxed{none} for a good part."
)


def inspection_prompt(product: str | None = None, defect_types: Sequence[str] | None = None,
                      frames: int = 1) -> str:
    """The user's request after the image. Named product and types make it specific; without
    them it is the generic prompt (unknown surfaces, new lines).

    >>> inspection_prompt()
    'Inspect this part. Which defect does it show? Answer none if it has none.'
    >>> inspection_prompt("pcb", ["scratch", "pit"])
    'Inspect this pcb part. Which defect does it show: scratch, pit? Answer none if it has none.'
    >>> inspection_prompt("cast_part", frames=3)[:40]
    'Inspect this sequence of 3 frames of a c'
    """
    name = product.replace("_", " ") if product else ""
    noun = name if name.endswith("part") else f"{name} part".strip()
    subject = f"this sequence of {frames} frames of a {noun}" if frames > 1 else f"this {noun}"
    types = [t for t in (defect_types or ()) if t != NO_DEFECT]
    question = f"Which defect does it show: {', '.join(types)}?" if types else "Which defect does it show?"
    return f"Inspect {subject}. {question} Answer {NO_DEFECT} if it has none."

