"""Trajectories made concrete: each operation executed on the real frame, the environment's
messages and images inserted, the whole conversation encoded as one `Chunk` with loss on the
assistant turns that carry it. With a frozen backbone the images are replaced by the backbone's
feature maps once, so SFT epochs never touch pixels again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foveal.model.chat import ChatFormat, Chunk
from foveal.model.vision import ConvVisionTower
from foveal.operations import ImageBudget, RGBImage, Workspace, execute
from foveal.plant.dataset import Label, load_image
from foveal.reasoning.prompts import SYSTEM_PROMPT
from foveal.training.trajectories import Trajectory


@dataclass
class Example:
    chunk: Chunk  # patches dropped once `maps` are computed
    maps: list[torch.Tensor]  # per image (C, rows, cols) float16 backbone maps
    item_id: str
    kind: str
    weights: list[float] | None = None  # per chunk token loss weight (`forward.decision_weights`)


class TrajectoryError(ValueError):
    """A synthesized operation failed on the real frame (a synthesis bug, never silently kept)."""


def frames_of(label: Label, folder: Path) -> list[RGBImage]:
    if label.image is not None:
        return [load_image(folder, label.image)]
    return [load_image(folder, rel) for rel in label.frames or []]


def materialize(trajectory: Trajectory, frames: Sequence[RGBImage], fmt: ChatFormat,
                budget: ImageBudget = ImageBudget(), allow_errors: bool = False) -> Chunk:
    """The trajectory as the model will live it: operations run on `frames` by `operations`.
    A failing operation raises, unless `allow_errors` (trajectories that teach recovery from an
    `Execution error`), when its error message is what the model reads next."""
    ws = Workspace(frames, budget)
    chunk = fmt.prompt([ws.views[0].pixels], trajectory.prompt)
    last = len(trajectory.turns) - 1
    for i, turn in enumerate(trajectory.turns):
        chunk.extend(fmt.assistant(turn.text, turn.loss))
        if i == last:
            break
        result = execute(turn.text, ws)
        if not result.ok and not allow_errors:
            raise TrajectoryError(f"{trajectory.item_id} ({trajectory.kind}) turn {i + 1}: {result.message}")
        chunk.extend(fmt.environment(result.message, [v.pixels for v in result.views]))
    return chunk


@torch.no_grad()
def with_maps(chunk: Chunk, tower: ConvVisionTower, item_id: str, kind: str) -> Example:
    """Compute the chunk's backbone maps (frozen tower) and drop its pixels."""
    maps: list[torch.Tensor] = []
    if chunk.patches:
        pixel_values = torch.from_numpy(np.concatenate(chunk.patches))
        images = tower.images(pixel_values, torch.tensor(chunk.grids))
        maps = [m.half() for m in tower.feature_maps(images)]
    bare = Chunk(chunk.ids, chunk.types, chunk.loss, [], chunk.grids)
    return Example(bare, maps, item_id, kind)


def corpus_lines(trajectories: Sequence[Trajectory]) -> list[str]:
    """Every text the model reads or writes, for training the tokenizer (numbers are isolated
    by the pre-tokenizer, so one size per message shape is enough)."""
    lines = [SYSTEM_PROMPT, "system\n", "user\n", "assistant\n", "\n",
             "Here is the cropped image (Image Size: 448x336):",
             "Here are the selected frames (frame 3):", "Here are the selected frames (frames 1, 4, 7):",
             "Execution error: answer with \\boxed{...} now."]
    for t in trajectories:
        lines.append(t.prompt)
        lines += [turn.text for turn in t.turns]
    return lines
