"""`foveal export onnx`: the compact model's vision encoder as ONNX for onnxruntime (the Triton
model's `vision: onnx` path). Checked against the torch tower on random views before it is kept.
`foveal export reviews --format foveal|mvtec|coco --out DIR`: the reviewed data as a dataset for
retraining (what the dashboard's Export page writes), recorded as a dataset snapshot."""

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


@app.command("reviews")
def reviews_command(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="A new folder for the dataset."),
    fmt: str = typer.Option("foveal", "--format", help="foveal (labels.jsonl), mvtec or coco."),
    line: str | None = typer.Option(None, "--line", help="Only this production line."),
    product: str | None = typer.Option(None, "--product", help="Only this product."),
) -> None:
    """Export reviewed inspections (the reviewer's labels, full frames) as a dataset."""
    from foveal.dashboard.export import ExportFilters, export_reviews
    from foveal.storage.database import ensure_reachable, make_engine, session_factory

    state: AppState = ctx.obj
    engine = make_engine(state.settings.postgres_url, pool_size=1, max_overflow=0)
    sessions = session_factory(engine)
    try:
        ensure_reachable(sessions)
        with sessions() as session, session.begin():
            done = export_reviews(session, state.settings, fmt, out, ExportFilters(line, product))
    finally:
        engine.dispose()
    Console().print(f"wrote {done.items} items ({fmt}) to {done.path}; snapshot {done.snapshot_id}; "
                    f"skipped {len(done.skipped)}")
    for reason in done.skipped[:20]:
        Console().print(f"  skipped {reason}")
