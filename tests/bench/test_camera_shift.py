"""`bench/camera_shift.py`: a labelled folder copied as another camera would see it; the labels,
masks and the pixels' places stay, the values change the same way on every run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

SCRIPT = Path(__file__).parents[2] / "bench" / "camera_shift.py"


def _folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "sequences" / "s0").mkdir(parents=True)
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    image = np.dstack([ramp] * 3)
    cv2.imwrite(str(root / "images" / "f0.png"), image)
    cv2.imwrite(str(root / "sequences" / "s0" / "00.png"), image)
    cv2.imwrite(str(root / "masks" / "f0.png"), (ramp > 128).astype(np.uint8) * 255)
    (root / "labels.jsonl").write_text(json.dumps({"id": "f0", "image": "images/f0.png"}) + "\n")
    (root / "manifest.json").write_text(json.dumps({"items": 1}))
    return root


def _run(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_a_shifted_copy_keeps_labels_and_masks_and_repeats_byte_for_byte(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src")
    assert _run(source, tmp_path / "a").returncode == 0
    assert _run(source, tmp_path / "b").returncode == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "labels.jsonl").read_bytes() == (source / "labels.jsonl").read_bytes()
    assert (a / "masks" / "f0.png").read_bytes() == (source / "masks" / "f0.png").read_bytes()
    for image in ("images/f0.png", "sequences/s0/00.png"):
        assert (a / image).read_bytes() == (b / image).read_bytes()
        before, after = cv2.imread(str(source / image)), cv2.imread(str(a / image))
        assert after.shape == before.shape and after.mean() < 0.75 * before.mean()  # "dim": darker
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["items"] == 1 and manifest["camera_shift"]["name"] == "dim"
    assert not list(tmp_path.glob("*.partial"))


def test_an_existing_target_or_an_unlabelled_source_is_refused(tmp_path: Path) -> None:
    source = _folder(tmp_path / "src")
    (tmp_path / "taken").mkdir()
    refused = _run(source, tmp_path / "taken")
    assert refused.returncode == 2 and "exists" in refused.stderr
    (tmp_path / "plain").mkdir()
    refused = _run(tmp_path / "plain", tmp_path / "new")
    assert refused.returncode == 2 and "not a labelled folder" in refused.stderr
    assert not (tmp_path / "new").exists()
