"""Copy a labelled folder as if a different camera had taken it: for measuring what a line change
(new lighting, a new sensor) costs the model and what `foveal retrain` on reviews of it wins back.

Every image of the folder (single frames under `images/`, sequence frames under `sequences/`)
goes through the same photometric change; masks, labels and boxes are copied unchanged, since
the change moves no pixel. The manifest records the shift. The change, per 8-bit channel value
v in [0, 255]:

    v' = clip(gain · 255 · (v / 255) ** gamma + offset + noise · N(0, 1))

with the noise drawn from a seed made of the file's path, so the same command writes the same
bytes. The default, `dim`, is a dimmer light on a noisier sensor (gain 0.6, gamma 1.3, offset 6,
noise 5): the marks stay where they were, at lower contrast and under more grain.

    .venv/bin/python bench/camera_shift.py /work/data/plant30 /work/data/plant30-dim
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.progress import track


@dataclass(frozen=True)
class Shift:
    gain: float
    gamma: float
    offset: float
    noise: float


SHIFTS = {
    "dim": Shift(gain=0.6, gamma=1.3, offset=6.0, noise=5.0),
    "bright": Shift(gain=1.25, gamma=0.8, offset=0.0, noise=2.0),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def apply(shift: Shift, image: np.ndarray, seed: int) -> np.ndarray:
    """The shifted copy of an 8-bit image; the same seed gives the same noise.

    >>> img = np.full((2, 2, 3), 255, np.uint8)
    >>> apply(Shift(gain=0.5, gamma=1.0, offset=0.0, noise=0.0), img, 0)[0, 0].tolist()
    [128, 128, 128]
    """
    v = 255.0 * shift.gain * (image.astype(np.float32) / 255.0) ** shift.gamma + shift.offset
    if shift.noise:
        v += shift.noise * np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def path_seed(relative: str) -> int:
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:4], "little")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a labelled folder (manifest.json, labels.jsonl)")
    parser.add_argument("out", type=Path, help="the new folder; must not exist")
    parser.add_argument("--shift", choices=sorted(SHIFTS), default="dim")
    args = parser.parse_args()
    if not (args.source / "labels.jsonl").is_file():
        parser.error(f"{args.source} has no labels.jsonl: not a labelled folder")
    if args.out.exists():
        parser.error(f"{args.out} exists; pick a new folder")
    shift = SHIFTS[args.shift]
    scratch = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(args.source, scratch)  # masks, labels, manifest unchanged
    images = sorted(p for sub in ("images", "sequences") for p in (scratch / sub).rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in track(images, description=f"shifting ({args.shift})"):
        relative = path.relative_to(scratch).as_posix()
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SystemExit(f"{path}: not a readable image")
        if not cv2.imwrite(str(path), apply(shift, image, path_seed(relative))):
            raise SystemExit(f"{path}: could not be written")
    manifest_path = scratch / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest["camera_shift"] = {"name": args.shift, **asdict(shift), "from": str(args.source)}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    scratch.rename(args.out)
    print(f"{len(images)} images shifted ({args.shift}) into {args.out}")


if __name__ == "__main__":
    main()
