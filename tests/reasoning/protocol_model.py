"""A micro model taught three scripted inspections in seconds (zoom, select frames, recover from an
`Execution error`): shared by the loop's protocol tests and the serving tests, where a model that
really operates is needed and accuracy is not the point."""

from __future__ import annotations

import random

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from foveal.model.loader import VLM, create
from foveal.serving.request import GENERIC, prompt_for
from foveal.training.examples import materialize, with_maps
from foveal.training.sft import example_loss, trainable
from foveal.training.trajectories import AssistantTurn, Trajectory, tool_call

CROP = tool_call("crop_image_normalized", {"bbox_2d": [0.2, 0.2, 0.4, 0.4], "target_image": 1})
BAD = tool_call("crop_image_normalized", {"bbox_2d": [0.6, 0.2, 0.4, 0.4], "target_image": 1})
SELECT = tool_call("select_frames", {"target_frames": [1, 3]})
SCRIPTS = {
    # the prompts the reasoning service writes for a frame or a 3-frame sequence of no named product
    "zoom": (prompt_for(GENERIC, 1), 1, [f"A mark. {CROP}", "\\boxed{scratch}"]),
    "select": (prompt_for(GENERIC, 3), 3, [f"Look closer. {SELECT}", "\\boxed{pit}"]),
    "recover": ("Check this part.", 1, [f"A mark. {BAD}", f"Fix the box. {CROP}", "\\boxed{dent}"]),
}


def frames_for(name: str, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(sorted(SCRIPTS).index(name))
    return [rng.integers(0, 256, (560, 700, 3), dtype=np.uint8) for _ in range(n)]


def teach_protocol(tokenizer: PreTrainedTokenizerBase, steps: int = 150) -> VLM:
    vlm = create(tokenizer, "micro", seed=1)
    tower = vlm.model.model.visual
    examples = []
    for name, (prompt, n, texts) in SCRIPTS.items():
        turns = tuple(AssistantTurn(t, True) for t in texts)
        chunk = materialize(Trajectory(name, prompt, turns, "", name), frames_for(name, n), vlm.chat,
                            allow_errors=True)
        examples.append(with_maps(chunk, tower, name, name))
    optimizer = torch.optim.AdamW(trainable(vlm), lr=3e-3)
    random.seed(0)
    vlm.model.train()
    for _ in range(steps):
        loss = example_loss(vlm, examples)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    vlm.model.train(False)
    assert float(loss.detach()) < 0.05, float(loss.detach())
    return vlm
