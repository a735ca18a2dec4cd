"""Where the rerank's winning look should be centred: on the whole view's cell it came from, or on
the peak (or the peak's blob) of the cell head in the winner's own full-resolution crop.

For each defective single image of a labelled dataset the pointer's rerank is replayed without the
decoder: the whole view's top looks (`CellPointer._boxes`), each cropped from the original frame at
`PROBE_PIXELS`, the crop whose cell-head peak is highest wins. Then three boxes of the same size:
the winner's own ("cell"), one centred on the peak cell of its crop ("peak", what the pointer does
since session 24), and one centred on the p-weighted centroid of the 8-connected cells around the
peak with p >= 0.5 x peak ("blob"). Each is padded as a crop is and checked against the labelled
box with the eval's `box_covers`. Prints a table per difficulty and, last, one JSON line (also
written to `--out`).

Run: `.venv/bin/python bench/look_centring.py --data /work/data/train23 --n 600`
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from foveal.evaluation.inference import read_rgb
from foveal.evaluation.metrics import box_covers
from foveal.model import loader
from foveal.model.pixels import normalized
from foveal.operations import crop_of, look_at, pad_and_clamp, resize_to_budget
from foveal.plant.dataset import read_labels
from foveal.reasoning.pointer import MAX_LOOKS, CellPointer, probe_budget

WAYS = ("cell", "peak", "blob")


def blob_centre(cells: np.ndarray, tau: float = 0.5) -> tuple[float, float]:
    """(x, y), normalized, of the p-weighted centroid of the 8-connected cells with p >= tau x
    peak that reach the peak cell.

    >>> blob_centre(np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    (0.6666666666666666, 0.5)
    """
    rows, cols = cells.shape
    start = np.unravel_index(int(cells.argmax()), cells.shape)
    seen, todo = {start}, [start]
    while todo:
        r, c = todo.pop()
        for n in ((r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)):
            if 0 <= n[0] < rows and 0 <= n[1] < cols and n not in seen and cells[n] >= tau * cells[start]:
                seen.add(n)
                todo.append(n)
    w = np.array([cells[n] for n in seen])
    y = float((w * (np.array([n[0] for n in seen]) + 0.5)).sum() / w.sum()) / rows
    x = float((w * (np.array([n[1] for n in seen]) + 0.5)).sum() / w.sum()) / cols
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/foveal_vl/1/weights"))
    parser.add_argument("--n", type=int, default=600, help="first N defective single images")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rerank", type=int, default=None,
                        help="candidate looks read at full resolution (default: the checkpoint's choice)")
    args = parser.parse_args()
    vlm = loader.load(args.model)
    pointer = CellPointer(vlm)
    rerank = int(vlm.meta.get("rerank", MAX_LOOKS)) if args.rerank is None else args.rerank

    def cells(image: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(normalized(image, vlm.chat.spec)).to(pointer.tower.dtype)
        with torch.inference_mode():
            return pointer._cell_maps([pixels])[0].float().numpy()

    labels = [lb for lb in read_labels(args.data)
              if lb.image and lb.bbox and lb.defect_type != "none"][:args.n]
    hits: Counter[tuple[str, str]] = Counter()
    for label in labels:
        frame = read_rgb(args.data / str(label.image))
        height, width = frame.shape[:2]
        boxes = CellPointer._boxes(torch.from_numpy(cells(resize_to_budget(frame, vlm.budget))))[:rerank]
        best: tuple[float, tuple[float, float, float, float], np.ndarray] | None = None
        for box in boxes:
            crop = crop_of(box, frame, (0, 0, width, height), 0, probe_budget(vlm.budget))
            if not isinstance(crop, str):
                found = cells(crop.pixels)
                if best is None or float(found.max()) > best[0]:
                    best = float(found.max()), box, found
        if best is None:
            continue
        _, box, found = best
        x1, y1, x2, y2 = pad_and_clamp(box)  # the region the winner's crop shows
        rows, cols = found.shape
        at = int(found.argmax())
        centres = {"peak": ((at % cols + 0.5) / cols, (at // cols + 0.5) / rows), "blob": blob_centre(found)}
        looks = {"cell": box, **{way: look_at(x1 + u * (x2 - x1), y1 + v * (y2 - y1), box[2] - box[0])
                                 for way, (u, v) in centres.items()}}
        difficulty = label.difficulty or "unknown"
        hits[(difficulty, "n")] += 1
        for way, look in looks.items():
            hits[(difficulty, way)] += box_covers(pad_and_clamp(look), label.bbox)
    result = {d: {"n": hits[(d, "n")], **{w: round(hits[(d, w)] / hits[(d, "n")], 3) for w in WAYS}}
              for d in sorted({d for d, _ in hits}) if hits[(d, "n")]}
    print(f"{'difficulty':<10} {'n':>5} " + " ".join(f"{w:>6}" for w in WAYS))
    for d, r in result.items():
        print(f"{d:<10} {r['n']:>5} " + " ".join(f"{r[w]:>6.3f}" for w in WAYS))
    line = json.dumps({"benchmark": "look_centring", "data": str(args.data), "model": str(args.model),
                       "rerank": rerank, "covers": result})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
