"""`foveal export onnx`: the compact model's vision encoder as ONNX for onnxruntime (the Triton
model's `vision: onnx` path). Checked against the torch tower on random views before it is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer
from rich.console import Console

from foveal.cli.context import AppState
from foveal.model.loader import load

app = typer.Typer(help="Export parts of the model for serving.", no_args_is_help=True)


@app.command("onnx")
def onnx_command(
    ctx: typer.Context,
    model: Path | None = typer.Option(None, help="Model directory (default: FOVEAL_MODEL_DIR)."),
    out: Path | None = typer.Option(None, help="ONNX file (default: <model>/vision.onnx)."),
) -> None:
    """Export the vision encoder to ONNX and report its difference from torch."""
    from foveal.serving.onnx_vision import FILE_NAME, OnnxVision, export

    state: AppState = ctx.obj
    folder = model or state.settings.model_dir
    vlm = load(folder)
    target = export(vlm, out or folder / FILE_NAME)
    vision = OnnxVision(target, vlm)
    rng = np.random.default_rng(0)
    worst = 0.0
    for height, width in [(448, 448), (448, 336), (224, 448)]:
        chunk = vlm.chat.image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        pixels, grids = torch.from_numpy(chunk.patches[0]), torch.tensor(chunk.grids)
        with torch.no_grad():
            expected = torch.cat(list(vlm.model.model.get_image_features(pixels, grids).pooler_output))
        worst = max(worst, float((vision(pixels, grids) - expected).abs().max()))
    size_mb = target.stat().st_size / 1e6
    Console().print(f"wrote {target} ({size_mb:.1f} MB); max |onnx - torch| = {worst:.2e}")
