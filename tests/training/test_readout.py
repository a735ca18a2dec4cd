"""`foveal train readout` (`foveal.training.readout`): the view head's type classifier refitted
on what it read in the loop; nothing else of the model moves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


COLOURS = {"scratch": (230, 40, 40), "crack": (40, 60, 230)}  # a defect's type shows as its colour


def _coloured_defects(folder: Path, n: int) -> None:
    """`n` grey frames, each with one small square whose colour says its type."""
    import cv2

    from foveal.plant.dataset import Label

    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for k in range(n):
        kind = list(COLOURS)[k % 2]
        frame = np.full((400, 600, 3), 128, np.uint8)
        x, y = int(rng.integers(40, 540)), int(rng.integers(40, 340))
        frame[y:y + 16, x:x + 16] = COLOURS[kind]
        cv2.imwrite(str(folder / "images" / f"f{k}.png"), frame[:, :, ::-1])
        lines.append(Label(id=f"f{k}", image=f"images/f{k}.png", product="p", defect_type=kind,
                           bbox=(x / 600, y / 400, (x + 16) / 600, (y + 16) / 400), width=600,
                           height=400).model_dump_json())
    (folder / "labels.jsonl").write_text("\n".join(lines) + "\n")


def test_tight_crops_are_cut_around_the_labelled_defect_at_the_probes_square() -> None:
    from foveal.operations import ImageBudget
    from foveal.training.readout import tight_crops

    frame = np.full((1000, 1500, 3), 100, np.uint8)
    frame[500:520, 700:720] = 255  # the defect
    box = (700 / 1500, 500 / 1000, 720 / 1500, 520 / 1000)
    crops = tight_crops(frame, box, 20, np.random.default_rng(0), ImageBudget(448 * 448, 56 * 56, 56))
    assert len(crops) == 20 and all(c.shape == (336, 336, 3) and c.dtype == np.uint8 for c in crops)
    assert all((c == 255).all(-1).sum() > 100 for c in crops)  # each holds the defect, up close
    assert len({c.tobytes() for c in crops}) == 20  # placed apart, as the loop's looks are


def test_fine_tuning_on_tight_looks_teaches_a_reader_backbone_and_leaves_the_tower(
        micro_tokenizer: object, tmp_path: Path) -> None:
    from foveal.model import loader
    from foveal.training.readout import run

    _coloured_defects(tmp_path / "data", 24)
    vlm = loader.create(micro_tokenizer, "micro", seed=0)  # type: ignore[arg-type]
    loader.save(vlm, tmp_path / "m")
    phases: set[str] = set()
    report = run(ReadoutConfig(model=tmp_path / "m", data=[tmp_path / "data"], out=tmp_path / "out", steps=0,
                               crop_steps=40, crops_per_item=4, crop_batch=16, crop_lr=3e-3, holdout=0.25),
                 lambda phase, done, total: phases.add(phase))
    tight = report["tight_looks"]
    assert tight["crops"] == 96 and tight["held_out_crops"] == 24 and "readings" not in report
    assert tight["held_out_accuracy_after"] >= 0.9 > tight["held_out_accuracy_before"]
    assert phases == {"cutting tight looks", "fine-tuning the reader on tight looks"}
    before, after = vlm.model.model.visual, loader.load(tmp_path / "out")
    tower = after.model.model.visual
    assert tower.reader_backbone is not None and after.version.endswith("-tight")
    for name, value in before.state_dict().items():  # the image tokens' tower is as it was
        assert torch.equal(value, tower.state_dict()[name]), name
    run(ReadoutConfig(model=tmp_path / "out", data=[tmp_path / "data"], out=tmp_path / "again", steps=0,
                      crop_steps=1, crops_per_item=1))
    meta = loader.load(tmp_path / "again").meta  # a refit keeps the record of the one before
    assert meta["readout"]["crop_steps"] == 1 and meta["earlier_readouts"][0]["tight_looks"] == tight


def test_a_readout_with_nothing_to_fit_is_refused(micro_tokenizer: object, tmp_path: Path) -> None:
    from foveal.model import loader
    from foveal.training.readout import run

    loader.save(loader.create(micro_tokenizer, "micro", seed=0), tmp_path / "m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to fit"):
        run(ReadoutConfig(model=tmp_path / "m", data=[tmp_path], out=tmp_path / "out", steps=0))
    assert not (tmp_path / "out").exists()


def test_a_temperature_calibrates_an_overconfident_reader_and_keeps_every_type_it_reads() -> None:
    from foveal.training.readout import calibration_error, fit_temperature, fold_temperature

    readings = _readings(400, seed=3)
    noise = torch.randn(400, 6, generator=torch.Generator().manual_seed(4))
    readings.features[:, :6] += 1.5 * noise  # about half the reads right
    view = torch.nn.Linear(8, len(DEFECT_TYPES))
    with torch.no_grad():  # the types' own features, weighted far too strongly: over-confident
        view.weight.zero_()
        view.bias.zero_()
        view.weight[1:, :6] = 8.0 * torch.eye(6)
    rows = list(range(400))
    before_error, before_reads = calibration_error(view, readings, rows), view(readings.features).argmax(1)
    temperature = fit_temperature(view, readings, rows)
    fold_temperature(view, temperature)
    after_error = calibration_error(view, readings, rows)
    assert temperature > 2.0 and before_error is not None and after_error is not None
    assert after_error < 0.5 * before_error and after_error < 0.05
    assert torch.equal(view(readings.features).argmax(1), before_reads)  # the same type read for every item
    assert calibration_error(view, readings, []) is None


def test_an_unknown_loop_fit_is_refused_before_any_fine_tuning(micro_tokenizer: object,
                                                              tmp_path: Path) -> None:
    from foveal.model import loader
    from foveal.training.readout import run

    loader.save(loader.create(micro_tokenizer, "micro", seed=0), tmp_path / "m")  # type: ignore[arg-type]
    phases: list[str] = []
    with pytest.raises(ValueError, match="loop_fit must be"):
        run(ReadoutConfig(model=tmp_path / "m", data=[tmp_path], out=tmp_path / "out", crop_steps=5,
                          loop_fit="temprature"), lambda phase, done, total: phases.append(phase))
    assert phases == [] and not (tmp_path / "out").exists()  # nothing cut, nothing fitted, nothing written


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 11, 20, 1500])
def test_the_fine_tunes_schedule_runs_any_number_of_steps_and_peaks_at_the_rates_given(steps: int) -> None:
    from foveal.training.readout import one_cycle

    weights = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [weights], "lr": 1e-3}])
    schedule = one_cycle(optimizer, [1e-3], steps)  # torch's own divided by zero at 10 steps
    seen = []
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert max(seen) <= 1e-3 * (1 + 1e-9) and (steps < 3 or max(seen) > 0.5e-3)
