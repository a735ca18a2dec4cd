"""Load a model directory: foveal's compact model or a real Qwen2.5-VL checkpoint (for example
PixelReasoner-RL-v1), both through transformers' Auto classes, with the tokenizer, the chat
format and the pixel settings the reasoning loop needs. `save` writes a compact model the same
way, plus `foveal.json` (name, version, lineage) next to the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from foveal.errors import FovealError
from foveal.model.chat import ChatFormat
from foveal.model.modeling import register
from foveal.model.pixels import CLIP_MEAN, CLIP_STD, PixelSpec
from foveal.model.vision import ConvVisionTower, fast_low_precision
from foveal.operations import ImageBudget

META_FILE = "foveal.json"


class ModelError(FovealError):
    """A model directory is missing, incomplete or of an unknown kind."""


@dataclass
class VLM:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    chat: ChatFormat
    name: str
    version: str
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    budget: ImageBudget = field(default_factory=ImageBudget)  # pixels per image in the context


def pixel_spec(path: Path) -> PixelSpec:
    """The processor's patch geometry and normalization (defaults: Qwen2.5-VL's)."""
    config_file = path / "preprocessor_config.json"
    if not config_file.is_file():
        return PixelSpec()
    raw = json.loads(config_file.read_text())
    return PixelSpec(patch=int(raw.get("patch_size", 14)), merge=int(raw.get("merge_size", 2)),
                     temporal=int(raw.get("temporal_patch_size", 2)),
                     mean=tuple(raw.get("image_mean", CLIP_MEAN)),
                     std=tuple(raw.get("image_std", CLIP_STD)))


def image_budget(path: Path, spec: PixelSpec) -> ImageBudget:
    """The processor's pixel budget; sides are multiples of patch x merge (28 px for Qwen2.5-VL)."""
    config_file = path / "preprocessor_config.json"
    raw = json.loads(config_file.read_text()) if config_file.is_file() else {}
    default = ImageBudget()
    return ImageBudget(max_pixels=int(raw.get("max_pixels", default.max_pixels)),
                       min_pixels=int(raw.get("min_pixels", max(default.min_pixels, 4 * spec.factor ** 2))),
                       factor=spec.factor)


def load_chat(path: Path) -> tuple[ChatFormat, ImageBudget]:
    """Only what a client of a remote model needs: tokenizer, chat format and pixel budget."""
    register()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer in {path}: {exc}") from exc
    spec = pixel_spec(path)
    return ChatFormat(tokenizer, spec, patches=False), image_budget(path, spec)


TOWER_PRECISIONS = ("auto", "float32", "bfloat16")


def set_tower_precision(vlm: VLM, precision: str = "auto") -> torch.dtype | None:
    """The dtype a compact tower's backbone runs the pointer's reranked probes in (the candidate
    looks before a zoom; never an image the decoder sees, a type read or a sequence's frame
    looks), on the device the model is on now: "auto" is bfloat16 where that device runs it natively
    (`vision.fast_low_precision`), "float32" the weights' own, "bfloat16" always. Returns the
    dtype set (None: the weights' own); a model without a compact tower (a Qwen2.5-VL
    checkpoint) is left as it is."""
    if precision not in TOWER_PRECISIONS:
        raise ValueError(f"tower precision must be one of {', '.join(TOWER_PRECISIONS)}, not {precision!r}")
    tower = getattr(getattr(vlm.model, "model", None), "visual", None)
    if not isinstance(tower, ConvVisionTower):
        return None
    device = next(tower.parameters()).device
    tower.probe_dtype = {"auto": fast_low_precision(device), "float32": None,
                         "bfloat16": torch.bfloat16}[precision]
    return tower.probe_dtype


def load(path: Path, *, dtype: torch.dtype = torch.float32, tower_precision: str = "auto") -> VLM:
    """The model in `path` ready for inference (eval mode); a compact tower's probes run in
    `tower_precision` (`set_tower_precision`; training loads with "float32")."""
    register()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model directory: no config.json")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the model in {path}: {exc}") from exc
    model.train(False)  # eval mode (`eval` itself is untyped in transformers)
    # the compact tower: its backbones' weights in the layout they run in
    lay_out = getattr(getattr(getattr(model, "model", None), "visual", None), "lay_out", None)
    if lay_out is not None:
        lay_out()
    meta_file = path / META_FILE
    meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    spec = pixel_spec(path)
    vlm = VLM(model, tokenizer, ChatFormat(tokenizer, spec),
              name=str(meta.get("name", path.name)), version=str(meta.get("version", "1")), path=path,
              meta=meta, budget=image_budget(path, spec))
    set_tower_precision(vlm, tower_precision)
    return vlm


def save(vlm: VLM, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Weights, config, tokenizer, processor settings and `foveal.json` into `path`."""
    path.mkdir(parents=True, exist_ok=True)
    vlm.model.save_pretrained(path)
    vlm.tokenizer.save_pretrained(path)
    spec = vlm.chat.spec
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": spec.patch,
        "merge_size": spec.merge, "temporal_patch_size": spec.temporal,
        "image_mean": list(spec.mean), "image_std": list(spec.std),
        "min_pixels": vlm.budget.min_pixels, "max_pixels": vlm.budget.max_pixels}, indent=2) + "\n")
    record = dict(vlm.meta, **(meta or {}), name=vlm.name, version=vlm.version)
    (path / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def create(tokenizer: PreTrainedTokenizerBase, preset: str = "default", *, name: str = "foveal-vl",
           version: str = "0", seed: int = 0) -> VLM:
    """A freshly initialised compact model for `tokenizer` (training starts here)."""
    from foveal.model import tokenizer as tk
    from foveal.model.config import compact_config
    from foveal.model.modeling import FovealVLForConditionalGeneration

    register()
    ids = {key: tk.token_id(tokenizer, tok) for key, tok in (
        ("image", tk.IMAGE_PAD), ("video", tk.VIDEO_PAD), ("vision_start", tk.VISION_START),
        ("vision_end", tk.VISION_END), ("eos", tk.IM_END), ("pad", tk.PAD))}
    torch.manual_seed(seed)
    model = FovealVLForConditionalGeneration(compact_config(preset, ids, len(tokenizer)))
    # chat format and pixel budget follow the tower's merge size (56 px cells for merge 4)
    spec = PixelSpec(merge=int(model.model.visual.spatial_merge_size))
    default = ImageBudget()
    budget = ImageBudget(max_pixels=default.max_pixels, factor=spec.factor,
                         min_pixels=max(default.min_pixels, 4 * spec.factor ** 2))
    return VLM(model.train(False), tokenizer, ChatFormat(tokenizer, spec), name=name, version=version,
               meta={"preset": preset}, budget=budget)


def _first_tokens(tokenizer: PreTrainedTokenizerBase, opening: str, texts: list[str],
                  closing: str) -> list[int]:
    """Per text, the first token it gets between `opening` and `closing` (as the model writes it)."""
    head = tokenizer(opening, add_special_tokens=False)["input_ids"]
    ids = []
    for text in texts:
        full = tokenizer(opening + text + closing, add_special_tokens=False)["input_ids"]
        if full[: len(head)] != head or len(full) <= len(head) + 1:  # the text's token(s) and the closing
            raise ModelError(f"the tokenizer does not keep {opening!r} apart from {text!r}")
        ids.append(int(full[len(head)]))
    return ids


def class_name_ids(tokenizer: PreTrainedTokenizerBase, names: tuple[str, ...]) -> list[int]:
    """Per class name, the first token it gets inside `\\boxed{...}`: the word the answer ends on."""
    return _first_tokens(tokenizer, "\\boxed{", list(names), "}")


def number_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The first token of each number 0.0, 0.01, ..., 1.0 as a tool call writes it (`[0.35, `;
    the default tokenizer writes each as one token, a small one may split the rarer ones)."""
    return _first_tokens(tokenizer, "[", [json.dumps(round(k / 100, 2)) for k in range(101)], ",")


def _compact_tower(vlm: VLM, what: str) -> tuple[Any, torch.nn.Embedding]:
    """The compact model's tower and its decoder's input embeddings (`what` names the caller's aim)."""
    from foveal.model.vision import ConvVisionTower

    tower = vlm.model.model.visual
    if not isinstance(tower, ConvVisionTower):
        raise ModelError(f"a {what} is for the compact model's convolutional tower")
    embedding = vlm.model.get_input_embeddings()
    assert isinstance(embedding, torch.nn.Embedding)
    return tower, embedding


def add_type_embedding(vlm: VLM) -> bool:
    """Give a compact model's tower its type embedding (`FovealVisionConfig.type_embedding`),
    seeded with the text embeddings of the class names; False when it already has one."""
    from foveal.domain import DEFECT_TYPES

    tower, embedding = _compact_tower(vlm, "type embedding")
    if tower.type_embed is not None:
        return False
    tower.enable_type_embedding(embedding.weight[class_name_ids(vlm.tokenizer, DEFECT_TYPES)])
    vlm.model.config.vision_config.type_embedding = True
    return True


def add_coord_embedding(vlm: VLM) -> bool:
    """Give a compact model's tower its coordinate embedding (`FovealVisionConfig.coord_embedding`),
    seeded with the number tokens' text embeddings; False when it already has one."""
    tower, embedding = _compact_tower(vlm, "coordinate embedding")
    if tower.coord_embed is not None:
        return False
    tower.enable_coord_embedding(embedding.weight[number_ids(vlm.tokenizer)])
    vlm.model.config.vision_config.coord_embedding = True
    return True


def untie_lm_head(vlm: VLM) -> bool:
    """Give the decoder an output projection of its own, started from the input embeddings (as
    Qwen2.5-VL-7B has; the 3B ties them); False when it has one already."""
    model = vlm.model
    lm_head, embeddings = model.lm_head, model.get_input_embeddings()
    assert isinstance(lm_head, torch.nn.Linear) and isinstance(embeddings, torch.nn.Embedding)
    if lm_head.weight.data_ptr() != embeddings.weight.data_ptr():
        return False
    model.config.tie_word_embeddings = False
    model.config.text_config.tie_word_embeddings = False
    lm_head.weight = torch.nn.Parameter(embeddings.weight.detach().clone())
    return True
