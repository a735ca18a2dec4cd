"""Configurations of foveal's compact vision-language model, in the Qwen2.5-VL family.

`FovealVLConfig` is a `Qwen2_5_VLConfig` whose vision tower is convolutional
(`FovealVisionConfig`): it reads the same flattened 14 px patches and grid sizes the Qwen2.5-VL
processor produces and emits one token per merged cell (`spatial_merge_size` 2: 28 px, Qwen's
own; 4: 56 px, a quarter of the tokens), so one code path (prompting, positions, the reasoning
loop) serves this model and a real Qwen2.5-VL / PixelReasoner checkpoint. `PRESETS` name the
sizes used: `default` (the committed model: 56 px cells and the stage-0 cell head inside the
tower), `v1` (the first committed model's layout: 28 px cells, no head) and `micro` (tests,
seconds on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

from foveal.domain import DEFECT_TYPES

MODEL_TYPE = "foveal_vl"
VISION_MODEL_TYPE = "foveal_conv_vision"


class FovealVisionConfig(Qwen2_5_VLVisionConfig):  # type: ignore[no-untyped-call]
    """The convolutional tower: `conv_channels` per stage (stride 2, 2, then 7: 28 px), `blocks`
    residual 3x3 blocks at that grid, then for `spatial_merge_size` 4 one more stride-2 stage and
    block (56 px cells); `fourier_bands` sine/cosine bands of each token's normalized position
    added before the merger (the decoder must read *where*). `cell_classes` > 0 keeps stage 0's
    per-cell classifier (and its view-level one) inside the tower: every token then also carries
    its cell's class log-probabilities and the view's summary (type probabilities, the peak
    defect probability and where it is), so "a defect here, it looks like X" is in the tokens."""

    model_type = VISION_MODEL_TYPE
    conv_channels: list[int] | tuple[int, ...] = (24, 48, 128)
    blocks: int = 2
    fourier_bands: int = 4
    cell_classes: int = 0
    merger_norm: bool = False  # LayerNorm on the merger's input, as Qwen2.5-VL's `ln_q`
    # with `cell_classes`: each token also gets its class probabilities times a (classes, out)
    # matrix seeded with the text embeddings of the class names (`seed_type_embedding`), so the
    # type the cell head reads arrives in the decoder's own word directions
    type_embedding: bool = False
    # each token also gets the word directions of the four numbers of `operations.look_box` for
    # its cell (a (101, out) matrix over 0.00-1.00, seeded from the number tokens' embeddings by
    # `loader.add_coord_embedding`): a zoom on a token is then a copy of what that token holds
    coord_embedding: bool = False
    # a linear classifier of its own (`ConvVisionTower.reader`) that reads a grounded answer's
    # type from the same pooled maps as the view head; only the pointer's read uses it, so
    # refitting it (`foveal train readout`, `foveal train rl --train reader`) leaves every image
    # token as it was. Without it the view head reads the type
    type_reader: bool = False
    # the type reader reads from a backbone of its own (`ConvVisionTower.reader_backbone`), a copy
    # of the tower's fine-tuned on tight looks at labelled defects (`foveal train readout
    # --crop-steps`): the read improves and every image token stays as it was
    reader_backbone: bool = False
    norm_groups: int = 8
    depth: int = 0
    hidden_size: int = 128
    out_hidden_size: int = 256
    tokens_per_second: int = 2


class FovealVLConfig(Qwen2_5_VLConfig):  # type: ignore[no-untyped-call]
    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(FovealVisionConfig),
        "text_config": SubConfigSpec(Qwen2_5_VLTextConfig),
    }


@dataclass(frozen=True)
class Preset:
    """Sizes of one compact model. `mrope_section` halves the head size into (t, h, w) parts."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    conv_channels: tuple[int, int, int]
    blocks: int
    mrope_section: tuple[int, int, int]
    merge: int = 2  # spatial merge: one token per (14 * merge) px cell
    cell_head: bool = False  # stage 0's cell classifier inside the tower, its output in every token
    merger_norm: bool = False  # LayerNorm on the merger's input (v3 on)


PRESETS: dict[str, Preset] = {
    "default": Preset(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768,
                      conv_channels=(24, 48, 128), blocks=2, mrope_section=(8, 12, 12),
                      merge=4, cell_head=True, merger_norm=True),
    "v1": Preset(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=768,
                 conv_channels=(24, 48, 128), blocks=2, mrope_section=(8, 12, 12)),
    "micro": Preset(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128,
                    conv_channels=(8, 16, 32), blocks=1, mrope_section=(4, 6, 6), cell_head=True),
    "micro4": Preset(hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128,
                     conv_channels=(8, 16, 32), blocks=1, mrope_section=(4, 6, 6), merge=4, cell_head=True),
}


def compact_config(preset: str | Preset, special_ids: dict[str, int], vocab_size: int,
                   max_positions: int = 4096) -> FovealVLConfig:
    """A `FovealVLConfig` of `preset` for a tokenizer with `vocab_size` tokens and these
    special token ids (keys: image, video, vision_start, vision_end, eos, pad)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    if sum(p.mrope_section) * 2 != p.hidden // p.heads:
        raise ValueError(f"mrope_section {p.mrope_section} must sum to half the head size "
                         f"{p.hidden // p.heads}")
    text: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
        num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
        max_position_embeddings=max_positions, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": list(p.mrope_section)},
        bos_token_id=special_ids["eos"], eos_token_id=special_ids["eos"], pad_token_id=special_ids["pad"],
    )
    if p.merge not in (2, 4):
        raise ValueError(f"merge {p.merge} must be 2 (28 px cells) or 4 (56 px cells)")
    vision: dict[str, Any] = dict(conv_channels=list(p.conv_channels), blocks=p.blocks,
                                  hidden_size=p.conv_channels[-1], out_hidden_size=p.hidden,
                                  spatial_merge_size=p.merge,
                                  cell_classes=len(DEFECT_TYPES) if p.cell_head else 0,
                                  merger_norm=p.merger_norm)
    return FovealVLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=special_ids["image"], video_token_id=special_ids["video"],
        vision_start_token_id=special_ids["vision_start"], vision_end_token_id=special_ids["vision_end"],
    )
