"""`foveal train readout` (`foveal.training.readout`): the view head's type classifier refitted
on what it read in the loop; nothing else of the model moves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foveal.domain import DEFECT_TYPES
from foveal.training.readout import Readings, ReadoutConfig, _accuracy, fit, split


def _readings(n: int, features: int = 8, seed: int = 0) -> Readings:
    """Types 1..6 with one feature each that says which: separable by a linear layer."""
    gen = torch.Generator().manual_seed(seed)
    types = torch.randint(1, len(DEFECT_TYPES), (n,), generator=gen)
    x = torch.randn((n, features), generator=gen) * 0.3
    x[torch.arange(n), types - 1] += 2.0
    return Readings(x, types, [f"item{i // 2}" for i in range(n)])  # two readings per item


def test_the_fit_learns_the_types_from_what_was_read_and_is_checked_on_held_out_items(tmp_path: Path) -> None:
    readings = _readings(240)
    torch.manual_seed(0)
    view = torch.nn.Linear(8, len(DEFECT_TYPES))
    fit_rows, held = split(readings.items, 0.25, seed=0)
    before = _accuracy(view, readings, held)
    config = ReadoutConfig(model=tmp_path, data=[], out=tmp_path, steps=200, lr=0.05, weight_decay=0.0)
    fit(view, readings, fit_rows, config)
    after = _accuracy(view, readings, held)
    assert before is not None and after is not None and after > 0.9 > before
    assert _accuracy(view, readings, []) is None


def test_the_held_out_check_keeps_each_item_on_one_side() -> None:
    items = [f"item{i // 3}" for i in range(30)]
    fit_rows, held = split(items, 0.2, seed=1)
    assert sorted(fit_rows + held) == list(range(30)) and len(held) == 6  # 2 of 10 items, 3 rows each
    assert not {items[i] for i in fit_rows} & {items[i] for i in held}
    assert split(items, 0.2, seed=1) == (fit_rows, held)  # the same split on a rerun


def test_a_model_without_a_view_head_is_refused(micro_tokenizer: object, tmp_path: Path) -> None:
    from foveal.model import loader
    from foveal.training.readout import run

    loader.save(loader.create(micro_tokenizer, "v1", seed=0), tmp_path / "m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no view head"):
        run(ReadoutConfig(model=tmp_path / "m", data=[tmp_path], out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing written
