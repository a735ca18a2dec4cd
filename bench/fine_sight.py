"""Can a small network made for it see tiny defects at native resolution? A diagnostic next to
`bench/tower_sight.py`, which found the model's vision tower (stride-4 stem, 56 px cells) at
chance on tiny defects in whole frames and at AUROC 0.729 on 224 px native windows.

It trains a purpose-built fully convolutional detector (stride-1 first layer, 4 px output
stride, ~0.1 M parameters, global max pooling into a 7-way head: `none` + the six types) on
64 px patches of native pixels cut from a rendered training set (positives round each defect,
negatives anywhere else; flips and rotations), then scores the same kind of 224 px native windows
as tower_sight on the first N single test images (two holding the defect, two anywhere, seed 2):
AUROC of windows holding a defect against the rest per difficulty, the type named right on the
windows holding one, and the time per window and per native-resolution frame scan.
Not part of the product: it says whether the pixels or the tower hold tiny defects back.

Run: `.venv/bin/python bench/fine_sight.py --train /work/data/train_fine --bench /work/data/fbench/test`
(about 10 min on two cores: ~3 min to cut patches, ~6 min to train, ~1 min to score).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from render_throughput import git_commit  # type: ignore[import-not-found]
from torch import nn
from tower_sight import WINDOW, native_windows  # type: ignore[import-not-found]

from foveal.domain import DEFECT_TYPES
from foveal.evaluation.inference import read_rgb
from foveal.plant.dataset import Label, read_labels
from foveal.training.pretrain import auroc

PATCH = 64
DIFFICULTIES = ("easy", "hard", "tiny")


def standardized(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(3, H, W): each channel less its mean, over the image's overall std (local contrast)."""
    x = image.astype(np.float32).transpose(2, 0, 1)
    x -= x.mean(axis=(1, 2), keepdims=True)
    return x / (x.std() + 4.0)


class FineNet(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 24, 1), *block(24, width, 2), *block(width, width, 1),
                                      *block(width, 2 * width, 2), *block(2 * width, 2 * width, 1))
        self.head = nn.Linear(2 * width, len(DEFECT_TYPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))  # (B, 7): none + the six types


def cut_patches(labels: list[Label], folder: Path, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, lb in enumerate(labels):
        if not lb.mask or lb.defect_type not in DEFECT_TYPES[1:]:
            continue
        frame = read_rgb(folder / str(lb.image))
        mask = read_rgb(folder / lb.mask)[:, :, 0] > 0
        h, w = mask.shape
        if not mask.any() or h < 3 * PATCH or w < 3 * PATCH:
            continue
        yy, xx = np.nonzero(mask)
        cy, cx = int(yy.mean()), int(xx.mean())
        kind = DEFECT_TYPES.index(lb.defect_type)
        for _ in range(4):
            y0 = min(max(0, cy - rng.randint(12, PATCH - 12)), h - PATCH)
            x0 = min(max(0, cx - rng.randint(12, PATCH - 12)), w - PATCH)
            if mask[y0:y0 + PATCH, x0:x0 + PATCH].any():
                xs.append(standardized(frame[y0:y0 + PATCH, x0:x0 + PATCH]))
                ys.append(kind)
        taken = 0
        while taken < 8:
            y0, x0 = rng.randint(0, h - PATCH), rng.randint(0, w - PATCH)
            if not mask[max(0, y0 - 8):y0 + PATCH + 8, max(0, x0 - 8):x0 + PATCH + 8].any():
                xs.append(standardized(frame[y0:y0 + PATCH, x0:x0 + PATCH]))
                ys.append(0)
                taken += 1
        if i % 100 == 0:
            print(f"  patches from {i}/{len(labels)} frames", flush=True)
    return np.stack(xs), np.asarray(ys)


def augment(x: torch.Tensor) -> torch.Tensor:
    if random.random() < 0.5:
        x = x.flip(3)
    if random.random() < 0.5:
        x = x.flip(2)
    return torch.rot90(x, random.randint(0, 3), dims=(2, 3))


def train(x: np.ndarray, y: np.ndarray, steps: int, batch: int = 64) -> tuple[FineNet, float]:
    torch.manual_seed(0)
    net = FineNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    weights = torch.tensor([1.0] + [2.0] * (len(DEFECT_TYPES) - 1))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    began = time.perf_counter()
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (batch,))
        loss = nn.functional.cross_entropy(net(augment(xt[idx])), yt[idx], weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            print(f"  step {step}/{steps} loss {loss.item():.3f}", flush=True)
    return net.eval(), time.perf_counter() - began


def windows(net: FineNet, labels: list[Label], folder: Path) -> dict[str, object]:
    """tower_sight's window protocol (same seed and spots) scored by the fine net."""
    scores, holds, named, truth, where = [], [], [], [], []
    ms = []
    for lb, frame, mask, kind, y0, x0 in native_windows(labels, folder):
        inside = bool(mask is not None and mask[y0:y0 + WINDOW, x0:x0 + WINDOW].any())
        began = time.perf_counter()
        with torch.inference_mode():
            probs = torch.softmax(net(torch.from_numpy(
                standardized(frame[y0:y0 + WINDOW, x0:x0 + WINDOW]))[None]), 1)[0]
        ms.append((time.perf_counter() - began) * 1000)
        scores.append(1.0 - float(probs[0]))
        holds.append(inside)
        named.append(1 + int(probs[1:].argmax()))
        truth.append(kind if inside else 0)
        where.append(lb.difficulty or "none")
    s, hd, wh = np.array(scores), np.array(holds), np.array(where)
    out_auroc: dict[str, float | None] = {}
    for d in (*DIFFICULTIES, "all"):
        chosen = ~hd | (hd & ((wh == d) if d != "all" else True))
        out_auroc[d] = auroc(s[chosen], hd[chosen])
    type_right = {d: float(np.mean([n == t for n, t, x, ww in zip(named, truth, hd, wh, strict=True)
                                    if x and ww == d])) for d in DIFFICULTIES}
    return dict(windows=len(scores), auroc=out_auroc, type_right=type_right,
                ms_per_window=float(np.median(ms)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fine_sight.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = cut_patches([lb for lb in read_labels(args.train) if lb.image], args.train, random.Random(1))
    print(f"{len(y)} patches, {int((y > 0).sum())} holding a defect")
    net, train_s = train(x, y, args.steps)
    test = [lb for lb in read_labels(args.bench) if not lb.is_sequence and lb.image][: args.n]
    result = windows(net, test, args.bench)
    frame_px = 1500 * 1500
    with torch.inference_mode():
        probe = torch.zeros(1, 3, 512, 512)
        began = time.perf_counter()
        for _ in range(3):
            net(probe)
        ms_512 = (time.perf_counter() - began) / 3 * 1000
    result["ms_per_1500px_frame_scan"] = round(ms_512 * frame_px / (512 * 512), 1)
    result["train_s"] = round(train_s, 1)
    result["parameters"] = sum(p.numel() for p in net.parameters())
    a, t = result["auroc"], result["type_right"]
    print(f"\nnative windows ({result['windows']}): AUROC easy / hard / tiny / all "  # type: ignore[index]
          f"{a['easy']:.3f} / {a['hard']:.3f} / {a['tiny']:.3f} / {a['all']:.3f}; type right "  # type: ignore[index]
          f"{t['easy']:.3f} / {t['hard']:.3f} / {t['tiny']:.3f}; "  # type: ignore[index]
          f"{result['ms_per_window']:.1f} ms per window, "
          f"~{result['ms_per_1500px_frame_scan']:.0f} ms per 1500 px frame scan; trained {train_s:.0f} s")
    machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())
    line = json.dumps(dict(benchmark="fine_sight", train=str(args.train), n=len(test), steps=args.steps,
                           patches=len(y), results=result, commit=git_commit(), machine=machine))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
