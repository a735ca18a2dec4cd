"""foveal's vision-language model: the compact Qwen2.5-VL-family model, its tokenizer and chat
format, and one loader for it and for real Qwen2.5-VL checkpoints. Importing registers the
compact classes with transformers' Auto classes."""

from foveal.model.modeling import register

register()
