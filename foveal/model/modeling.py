"""foveal's compact VLM as transformers classes, registered with the Auto classes.

`FovealVLForConditionalGeneration` is `Qwen2_5_VLForConditionalGeneration` with the
convolutional tower of `foveal.model.vision` in place of the vision transformer; everything
else (decoder, 3D rotary positions, image-token protocol, `save_pretrained` /
`from_pretrained`) is transformers' own. Importing `foveal.model` registers the classes, so
`AutoModelForImageTextToText.from_pretrained(path)` loads either this model or a real
Qwen2.5-VL checkpoint.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    PreTrainedConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLModel,
    Qwen2_5_VLPreTrainedModel,
    Qwen2_5_VLTextModel,
)

from foveal.model.config import MODEL_TYPE, VISION_MODEL_TYPE, FovealVisionConfig, FovealVLConfig
from foveal.model.vision import ConvVisionTower


class _FovealInit:
    """Convolutions get He initialisation (the library default, N(0, 0.02), starves a CNN)."""

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)  # type: ignore[misc]


class FovealVLModel(_FovealInit, Qwen2_5_VLModel):  # type: ignore[no-untyped-call]
    config_class = FovealVLConfig

    def __init__(self, config: FovealVLConfig) -> None:
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.visual = ConvVisionTower(config.vision_config)  # type: ignore[arg-type]
        self.language_model = Qwen2_5_VLTextModel._from_config(config.text_config)  # type: ignore[no-untyped-call]
        self.rope_deltas = None
        self.post_init()  # type: ignore[no-untyped-call]


class FovealVLForConditionalGeneration(_FovealInit, Qwen2_5_VLForConditionalGeneration):  # type: ignore[no-untyped-call]
    config_class = FovealVLConfig

    def __init__(self, config: FovealVLConfig) -> None:
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.model = FovealVLModel(config)
        text = config.text_config
        assert isinstance(text, PreTrainedConfig)  # a dict or None only before the config's __post_init__
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()  # type: ignore[no-untyped-call]


def register() -> None:
    """Make the Auto classes know `foveal_vl` (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, FovealVLConfig)
        AutoConfig.register(VISION_MODEL_TYPE, FovealVisionConfig)
    except ValueError:  # already registered
        return
    AutoModelForImageTextToText.register(FovealVLConfig, FovealVLForConditionalGeneration)
