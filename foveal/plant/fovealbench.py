"""FovealBench: the fixed, seeded benchmark of foveal, built by `foveal data bench`.

Two splits, `dev` and `test`, each rendered by the plant-data renderer from its own seed:
frames balanced over products × defect types × difficulties with ~30 % defect-free, plus
multi-frame sequences for `select_frames`. The images are not committed; what is committed is
this module (the command, the seeds, the sizes) and `fovealbench.json`, the sha256 of each
split's `labels.jsonl`: a build that does not reproduce it is not FovealBench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.plant.dataset import LABELS_FILE, DatasetError, file_sha256

VERSION = "fovealbench-v1"
CHECKSUMS = Path(__file__).with_name("fovealbench.json")
DEFECT_SHARE = 0.7  # ~30 % of frames are defect-free, as on a line that mostly passes parts


@dataclass(frozen=True)
class Split:
    name: str
    seed: int
    frames: int
    sequences: int


SPLITS: dict[str, Split] = {
    "dev": Split("dev", seed=2026_11_01, frames=300, sequences=60),
    "test": Split("test", seed=2026_11_02, frames=1000, sequences=200),
}


def split(name: str) -> Split:
    try:
        return SPLITS[name]
    except KeyError:
        raise DatasetError(f"unknown FovealBench split {name!r}; choose from {', '.join(SPLITS)}") from None


def build(out: Path, name: str, *, workers: int | None = None, image_ext: str = ".png") -> str:
    """Render split `name` into `out` (a new folder); return the sha256 of its labels.jsonl."""
    from foveal.plant.generate import generate

    spec = split(name)
    generate(out, n=spec.frames, seed=spec.seed, defect_share=DEFECT_SHARE,
             sequences=spec.sequences, workers=workers, image_ext=image_ext)
    return file_sha256(out / LABELS_FILE)


def expected_checksums() -> dict[str, str]:
    """The committed sha256 of each split's labels.jsonl (empty before the first full build)."""
    if not CHECKSUMS.is_file():
        return {}
    data: dict[str, Any] = json.loads(CHECKSUMS.read_text())
    return {name: entry["labels_sha256"] for name, entry in data.get("splits", {}).items()}


def verify(folder: Path, name: str) -> bool:
    """True when `folder` holds exactly the committed labels of split `name`."""
    expected = expected_checksums().get(name)
    if expected is None:
        raise DatasetError(f"no committed checksum for split {name!r} in {CHECKSUMS}")
    return file_sha256(folder / LABELS_FILE) == expected


def record(name: str, labels_sha256: str) -> None:
    """Write a split's checksum into fovealbench.json (used once, after a full build)."""
    data: dict[str, Any] = json.loads(CHECKSUMS.read_text()) if CHECKSUMS.is_file() else {}
    spec = split(name)
    data["version"] = VERSION
    data.setdefault("splits", {})[name] = {
        "seed": spec.seed, "frames": spec.frames, "sequences": spec.sequences,
        "labels_sha256": labels_sha256,
        "command": f"foveal data bench --split {name} --out DIR",
    }
    CHECKSUMS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
