"""Caption examples: each caption is what the view's pixels show (from the mask), only the
caption carries loss, tiny defects get no whole-view caption."""

from __future__ import annotations

import doctest
import random
from pathlib import Path

import pytest

from foveal.model.loader import create
from foveal.plant.dataset import load_image, read_labels
from foveal.plant.generate import generate
from foveal.training import captions
from foveal.training.captions import NO_DEFECT_CAPTION, caption_chunks
from foveal.training.examples import frames_of


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("captions") / "data"
    generate(out, 8, seed=21, workers=1, size=512, progress=False)
    return out


def answer_of(vlm, chunk) -> str:  # type: ignore[no-untyped-def]
    """The text that carries loss."""
    return str(vlm.tokenizer.decode([t for t, loss in zip(chunk.ids, chunk.loss, strict=True) if loss]))


def test_doctests_pass() -> None:
    assert doctest.testmod(captions).failed == 0


def test_captions_say_what_the_view_shows_and_only_they_carry_loss(data: Path, micro_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vlm = create(micro_tokenizer, "micro", seed=0)
    seen_defect = seen_none = 0
    for label in read_labels(data):
        frames = frames_of(label, data)
        mask = load_image(data, label.mask)[:, :, 0] > 0 if label.mask else None
        chunks = caption_chunks(label, frames, mask, vlm.chat, vlm.budget, random.Random(0))
        assert len(chunks) == (2 if label.difficulty == "tiny" or label.bbox is None else 3)
        for chunk in chunks:
            answer = answer_of(vlm, chunk)
            assert answer.startswith(f"A {label.defect_type}") or answer.startswith(NO_DEFECT_CAPTION), answer
            seen_defect += answer.startswith("A ")
            seen_none += answer.startswith(NO_DEFECT_CAPTION)
            assert len(chunk.patches) == 1
        if label.bbox is not None:  # the zoom on the defect names it
            assert answer_of(vlm, chunks[-2]).startswith(f"A {label.defect_type}.")
    assert seen_defect and seen_none
