"""`foveal camera`: the camera simulator, frames onto `foveal.frames` at a rate with a progress bar.

`foveal camera --count 200 --rate 5 --station s1 --station s2` films a bank of rendered
FovealBench-style frames (rendered once, cached under the home directory); `--source DIR`
replays a dataset folder instead. See `foveal.camera` and services/camera/README.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from foveal.cli.context import settings_of

console = Console()


def camera(
    ctx: typer.Context,
    count: int = typer.Option(100, "--count", "-n", min=0, help="Records to send."),
    rate: float = typer.Option(2.0, "--rate", min=0.0, help="Records per second (0: as fast as possible)."),
    line: str = typer.Option("line-1", "--line", help="Production line id."),
    stations: list[str] = typer.Option(["station-1"], "--station",
                                       help="Station id (repeatable; records go round-robin)."),
    camera_id: str = typer.Option("cam-1", "--camera", help="Camera id at the station."),
    sequence_share: float = typer.Option(0.0, "--sequence-share", min=0.0, max=1.0,
                                         help="Share of records that are multi-frame sequences."),
    seed: int = typer.Option(0, "--seed", help="Seeds the bank's rendering and the order of frames."),
    source: Path | None = typer.Option(None, "--source", exists=True, file_okay=False,
                                       help="Replay this dataset folder (e.g. a FovealBench split) "
                                            "instead of the rendered bank."),
    bank: int = typer.Option(32, "--bank", min=1, help="Distinct frames in the rendered bank."),
    size: int | None = typer.Option(None, "--size", min=256, max=4096,
                                    help="Long side of rendered frames (default: 1024–2048 drawn)."),
    inline_max_bytes: int | None = typer.Option(
        None, "--inline-max-bytes", min=0,
        help="Largest inline image bytes per record; larger go by claim check "
             "(default: FOVEAL_FRAME_INLINE_MAX_BYTES)."),
) -> None:
    """Send FovealBench-style frames (and sequences) to foveal.frames at a given rate."""
    from foveal.camera import Camera, CameraConfig

    settings = settings_of(ctx)
    config = CameraConfig(line=line, stations=tuple(stations), camera=camera_id,
                          sequence_share=sequence_share, seed=seed, source=source,
                          bank_frames=bank, size=size, inline_max_bytes=inline_max_bytes)
    with Camera(settings, config, progress=True) as cam:
        console.print(f"filming {cam.bank.folder} ({len(cam.bank.frames)} frames, "
                      f"{len(cam.bank.sequences)} sequences) → {settings.kafka_address}")
        report = cam.run(count, rate)
    console.print(report.summary())
