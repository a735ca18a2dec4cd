"""`foveal predict` input discovery: files, folders of images, folders of numbered frames
(sequences), and clear errors for what cannot be inspected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from foveal.evaluation.inference import InputError, discover, read_rgb


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((64, 80, 3), 128, np.uint8))
    return path


def test_files_folders_and_numbered_frame_folders_become_inspections(tmp_path: Path) -> None:
    single = write(tmp_path / "a.png")
    write(tmp_path / "lot" / "p1.jpg")
    write(tmp_path / "lot" / "p2.png")
    for k in range(3):
        write(tmp_path / "lot" / "seq7" / f"{k:02d}.png")
    items = discover([str(single), str(tmp_path / "lot")])
    assert [i.name for i in items] == [str(single), str(tmp_path / "lot" / "p1.jpg"),
                                       str(tmp_path / "lot" / "p2.png"), str(tmp_path / "lot" / "seq7")]
    assert [len(i.frames) for i in items] == [1, 1, 1, 3]


def test_paths_that_cannot_be_inspected_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover([str(tmp_path / "missing.png")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="is not an image"):
        discover([str(tmp_path / "notes.txt")])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="cannot decode"):
        read_rgb(tmp_path / "broken.png")


def test_predict_reports_a_bad_path_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    missing = tmp_path / ("a-folder-name-long-enough-to-wrap-an-80-column-console-" * 2) / "[nope].png"
    command = [sys.executable, "-m", "foveal", "predict", str(missing), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error {missing} does not exist"
    assert "Traceback" not in done.stderr
    assert not out.exists()
