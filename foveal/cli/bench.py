"""`foveal bench serve`: the serving benchmark (foveal/serving/benchmark.py). Prints a table,
writes JSON, and prints one JSON object as its last line. Results go in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from foveal.cli.context import settings_of

app = typer.Typer(help="Benchmarks of foveal's parts.", no_args_is_help=True)
console = Console(stderr=True)


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    bench: Path = typer.Option(..., exists=True, file_okay=False, help="A FovealBench split (e.g. test)."),
    n: int = typer.Option(48, min=6, help="Items per level (one sequence per five frames)."),
    levels: str = typer.Option("1,4,16,32", help="Concurrency levels."),
    out: Path = typer.Option(Path("bench/results/serve.json"), help="JSON results."),
    port: int = typer.Option(28051, help="Port of the benchmarked reasoning service."),
) -> None:
    """Concurrency sweep of Inspect through the service and Triton, against the in-process loop."""
    from foveal.serving import benchmark as b
    from foveal.serving.process import ReasonerProcess
    from foveal.stack import Stack

    settings = settings_of(ctx)
    Stack(settings, parts=["triton"]).up()  # no-op when it runs already, or is external
    labels = b.pick(bench, n)
    inspections = b.inspections_of(labels, bench)
    requests = [b.request_of(label, bench) for label in labels]
    console.print(f"{len(labels)} items from {bench}; in-process reference first")
    vision = b.served_vision(settings)
    rows = [b.in_process(settings, inspections, vision)]
    service = ReasonerProcess(settings, port, port + 1, settings.home_dir / "logs" / "bench-reasoner.log")
    try:
        service.wait_serving()
        rows += b.through_service(settings, service, requests, [int(x) for x in levels.split(",")],
                                  settings.triton_model)
    finally:
        service.stop()
    rows += b.kept_versus_resent(settings, inspections)
    encoder = b.vision_speed(settings, inspections[:16])
    table = Table(title="foveal bench serve")
    for column in ("name", "items", "throughput/s", "mean ms", "p50 ms", "p95 ms", "p99 ms", "Triton batch"):
        table.add_column(column)
    for level in rows:
        r = level.row()
        table.add_row(str(r["name"]), str(r["items"]), f"{r['throughput_per_s']:.2f}", str(r["mean_ms"]),
                      str(r["p50_ms"]), str(r["p95_ms"]), str(r["p99_ms"]), str(r["triton_avg_batch"] or "-"))
    Console(width=150).print(table)
    e = encoder
    Console(width=150).print(
        f"vision encoder per whole-frame view: torch {e['vision_torch_ms']} ms, onnxruntime "
        f"{e['vision_onnxruntime_ms']} ms (max |diff| {e['vision_max_abs_diff']:.1e}); "
        f"Triton's model uses {vision}")
    reference = rows[0]
    by_c = {level.concurrency: level for level in rows if level.name.startswith("service")}
    kept, resent = rows[-2], rows[-1]
    summary = {
        "throughput_ratio_c16": round(by_c[16].throughput / reference.throughput, 3) if 16 in by_c else None,
        "overhead_pct": round((np.mean(by_c[1].latencies_ms) / np.mean(reference.latencies_ms) - 1) * 100, 1)
        if 1 in by_c else None,
        "triton_kept_vs_resent_speedup": round(resent.seconds / kept.seconds, 3),
        **encoder, "served_vision": vision,
        "levels": [level.row() for level in rows], "items": len(labels), "bench": str(bench),
        "commit": _commit(), "machine": dict(platform=platform.platform(), cpu_count=os.cpu_count(),
                                             python=platform.python_version()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def _commit() -> str:
    """HEAD of the checkout foveal runs from, `-dirty` with uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=root).stdout
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               check=True, cwd=root).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("-dirty" if dirty.strip() else "")
