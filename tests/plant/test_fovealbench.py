"""FovealBench builds reproducibly: the same split twice gives byte-identical labels, the
checksum is recorded and verified, and the committed splits have the promised sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from foveal.plant import fovealbench
from foveal.plant.dataset import read_labels

pytestmark = pytest.mark.slow

TINY = fovealbench.Split("tiny", seed=7, frames=6, sequences=1)


@pytest.fixture
def tiny_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setitem(fovealbench.SPLITS, "tiny", TINY)
    monkeypatch.setattr(fovealbench, "CHECKSUMS", tmp_path / "fovealbench.json")
    return "tiny"


def test_building_a_split_twice_gives_byte_identical_labels(tiny_split: str, tmp_path: Path) -> None:
    first = fovealbench.build(tmp_path / "a", tiny_split, workers=2)
    second = fovealbench.build(tmp_path / "b", tiny_split, workers=1)
    assert first == second
    assert (tmp_path / "a" / "labels.jsonl").read_bytes() == (tmp_path / "b" / "labels.jsonl").read_bytes()
    labels = read_labels(tmp_path / "a")
    assert sum(label.is_sequence for label in labels) == TINY.sequences
    assert len(labels) == TINY.frames + TINY.sequences


def test_recorded_checksum_verifies_the_build(tiny_split: str, tmp_path: Path) -> None:
    digest = fovealbench.build(tmp_path / "a", tiny_split, workers=2)
    fovealbench.record(tiny_split, digest)
    assert fovealbench.expected_checksums()[tiny_split] == digest
    assert fovealbench.verify(tmp_path / "a", tiny_split)
    (tmp_path / "a" / "labels.jsonl").write_text("tampered\n")
    assert not fovealbench.verify(tmp_path / "a", tiny_split)


def test_committed_splits_have_the_promised_sizes() -> None:
    test = fovealbench.SPLITS["test"]
    assert test.frames >= 1000 and test.sequences >= 200
    assert fovealbench.SPLITS["dev"].seed != test.seed
    assert fovealbench.DEFECT_SHARE == pytest.approx(0.7)


def test_unknown_split_is_a_clear_error_before_rendering(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "foveal", "data", "bench", "--out", str(tmp_path / "b"),
                             "--split", "dev", "--split", "nope"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "unknown FovealBench split 'nope'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()
