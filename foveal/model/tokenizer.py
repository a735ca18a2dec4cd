"""A byte-level BPE tokenizer trained with `tokenizers` on the trajectory corpus, Qwen-style.

It has Qwen2.5-VL's special tokens (`<|im_start|>`, `<|image_pad|>`, ...) and its `<tool_call>`
tags, and the same chat template shape, so the chat format and the reasoning loop treat it and a
real Qwen tokenizer alike. Pre-tokenization isolates numbers, `\\boxed{` and the closing brace
and nothing else, so frequent template phrases merge into single tokens (fewer decoding steps
on a CPU) while every coordinate and every answer stays its own token.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END,
                  "<|vision_pad|>", IMAGE_PAD, VIDEO_PAD)
ISOLATED = r"\d+(?:\.\d+)?|\\boxed\{|\}|\n"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048, max_token_length: int = 32
                    ) -> PreTrainedTokenizerFast:
    """Train on `corpus` (texts without special tokens) and wrap for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ISOLATED), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=max_token_length, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,  # type: ignore[no-untyped-call]
                                      additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    wrapped.add_tokens([TOOL_OPEN, TOOL_CLOSE])  # not special: decoded text keeps them, as in Qwen
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.model_max_length = 4096
    return wrapped


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token (transformers types the lookup as `int | list[int]`)."""
    i = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(i, int):
        raise ValueError(f"the tokenizer maps {token!r} to {i!r}, not to one token id")
    return i


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], skip_special_tokens: bool = False) -> str:
    """The text of one sequence of ids (transformers types the result as `str | list[str]`)."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(f"decoding one sequence gave {type(text).__name__}, not str")
    return text
