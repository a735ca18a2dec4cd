"""Run a model over a labelled dataset (FovealBench) and score it: the body of `foveal eval`.

The loop runs in batches of `batch_size`; with `named_prompt` the prompt names the item's
product and the taxonomy (the default on a line), else it is the generic prompt; `prompt_of`
(label, frames) → prompt overrides both (`foveal retrain` asks the service's catalog). Returns the
metrics and the per-item records (the `foveal predict` objects with the item's label beside them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from foveal.domain import DEFECT_TYPES
from foveal.evaluation.inference import prediction, read_rgb, record
from foveal.evaluation.metrics import Metrics, Prediction, correct_type, evaluate, kind_key
from foveal.model.loader import VLM
from foveal.plant.dataset import Label, read_labels
from foveal.reasoning.loop import Inspection, Loop, LoopOptions, Trace
from foveal.reasoning.prompts import inspection_prompt

PromptOf = Callable[[Label, int], str]


def inspection_of(label: Label, folder: Path, named_prompt: bool, prompt_of: PromptOf | None = None
                  ) -> Inspection:
    rels = [label.image] if label.image else list(label.frames or [])
    frames = [read_rgb(folder / rel) for rel in rels]
    if prompt_of is not None:
        prompt = prompt_of(label, len(frames))
    else:
        prompt = inspection_prompt(label.product if named_prompt else None,
                                   DEFECT_TYPES if named_prompt else None, len(frames))
    return Inspection(frames, prompt, item_id=label.id)


def traces_for(vlm: VLM, labels: Sequence[Label], folder: Path, options: LoopOptions, batch_size: int,
               named_prompt: bool = True, on_item: Callable[[int, int], None] | None = None,
               prompt_of: PromptOf | None = None) -> Iterator[Trace]:
    loop = Loop(vlm, options)
    done = 0
    for start in range(0, len(labels), batch_size):
        batch = [inspection_of(label, folder, named_prompt, prompt_of)
                 for label in labels[start:start + batch_size]]
        for trace in loop.run(batch):
            done += 1
            if on_item is not None:
                on_item(done, len(labels))
            yield trace


def evaluate_model(vlm: VLM, folder: Path, *, no_ops: bool = False, limit: int | None = None,
                   batch_size: int = 8, named_prompt: bool = True,
                   on_item: Callable[[int, int], None] | None = None,
                   options: LoopOptions | None = None) -> tuple[Metrics, list[dict[str, Any]]]:
    labels, predictions, records = predict_labelled(vlm, folder, no_ops=no_ops, limit=limit,
                                                    batch_size=batch_size, named_prompt=named_prompt,
                                                    on_item=on_item, options=options)
    return evaluate(labels, predictions), records


def predict_labelled(vlm: VLM, folder: Path, *, no_ops: bool = False, limit: int | None = None,
                     batch_size: int = 8, named_prompt: bool = True,
                     on_item: Callable[[int, int], None] | None = None,
                     options: LoopOptions | None = None, prompt_of: PromptOf | None = None
                     ) -> tuple[list[Label], list[Prediction], list[dict[str, Any]]]:
    """The first `limit` labels of `folder`, the model's prediction of each and its record (for
    paired comparisons of two models on the same items, `metrics.paired_differences`)."""
    labels = read_labels(folder)[:limit]
    base = options or LoopOptions()
    loop_options = LoopOptions(**{**base.__dict__, "allow_operations": not no_ops})
    predictions: list[Prediction] = []
    records: list[dict[str, Any]] = []
    by_id = {label.id: label for label in labels}
    for trace in traces_for(vlm, labels, folder, loop_options, batch_size, named_prompt, on_item, prompt_of):
        predictions.append(prediction(trace, trace.item_id))
        records.append(labelled_record(record(trace), by_id[trace.item_id]))
    return labels, predictions, records


def labelled_record(item: dict[str, Any], label: Label) -> dict[str, Any]:
    """A `foveal predict` object with what the label says beside it, for error analysis
    (`predictions.jsonl` of `foveal eval`)."""
    return {**item, "label": {"defect_type": label.defect_type, "difficulty": label.difficulty,
                              "product": label.product, "kind": kind_key(label), "bbox": label.bbox,
                              "bbox_frame": label.bbox_frame},
            "type_correct": correct_type(item["defect_type"], label.defect_type)}
