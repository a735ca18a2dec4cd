"""`foveal bench serve` (foveal/serving/benchmark.py) and `foveal bench pipeline`
(foveal/ingest/benchmark.py): each prints a table, writes JSON, and prints one JSON object as its
last line. Results go in docs/benchmarks.md."""

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
from foveal.settings import Settings

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
    rounds: int = typer.Option(2, min=1, help="Passes over the items timing the service at concurrency 1 "
                                              "and the same work in process on the same threads, item by "
                                              "item, which goes first alternating; the overhead pools them."),
) -> None:
    """Concurrency sweep of Inspect through the service and Triton, against the in-process loop."""
    from foveal.stack import Stack

    settings = settings_of(ctx)
    triton = Stack(settings, parts=["triton"])
    # an embedded Triton this run starts is stopped at its end; one already running (or external) stays
    started = [s.part for s in triton.status() if s.mode == "embedded" and s.state == "stopped"]
    triton.up()
    try:
        _serve_bench(settings, bench, n, levels, out, port, rounds)
    finally:
        if started:
            Stack(settings, parts=started).down()


def _serve_bench(settings: Settings, bench: Path, n: int, levels: str, out: Path, port: int,
                 rounds: int = 2) -> None:
    from foveal.serving import benchmark as b
    from foveal.serving.process import ReasonerProcess

    labels = b.pick(bench, n)
    inspections = b.inspections_of(labels, bench)
    requests = [b.request_of(label, bench) for label in labels]
    console.print(f"{len(labels)} items from {bench}; in-process reference first")
    vision, threads = b.served_vision(settings), b.served_threads(settings)
    precision = b.served_tower_precision(settings)
    rows = [b.in_process(settings, inspections, vision, precision),
            b.in_process_same_work(settings, requests, inspections, vision, tower_precision=precision)]
    if threads:  # the same work on the thread budget one Triton instance has
        rows.append(b.in_process_same_work(settings, requests, inspections, vision, threads, precision))
    service = ReasonerProcess(settings, port, port + 1, settings.home_dir / "logs" / "bench-reasoner.log")
    try:
        service.wait_serving()
        rows += b.through_service(settings, service, requests, [int(x) for x in levels.split(",")],
                                  settings.triton_model)
        # the overhead item by item: separate blocks of 48 items moved by 8 points between two runs
        # of the same code (session 19), and by 17 between rounds of one run (session 28)
        paired = b.paired_overhead(settings, service, requests, inspections, vision, threads, rounds,
                                   precision)
    finally:
        service.stop()
    rows += [*paired, *b.kept_versus_resent(settings, inspections)]
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
    reference, same_work, same_threads = rows[0], rows[1], (rows[2] if threads else None)
    by_c = {level.concurrency: level for level in rows if level.name.startswith("service")}
    kept, resent = rows[-2], rows[-1]
    paired_ref, paired_svc = paired
    per_pass = len(requests)
    over_passes = [b.pooled_overhead_pct(
        [b.Level("", 1, 0.0, paired_svc.latencies_ms[i:i + per_pass])],
        [b.Level("", 1, 0.0, paired_ref.latencies_ms[i:i + per_pass])])
        for i in range(0, len(paired_ref.latencies_ms), per_pass)]
    summary = {
        "throughput_ratio_c16": round(by_c[16].throughput / reference.throughput, 3) if 16 in by_c else None,
        "overhead_pct": round((np.mean(by_c[1].latencies_ms) / np.mean(reference.latencies_ms) - 1) * 100, 1)
        if 1 in by_c else None,
        "overhead_same_work_pct": round((np.mean(by_c[1].latencies_ms) / np.mean(same_work.latencies_ms) - 1)
                                        * 100, 1) if 1 in by_c else None,
        # the service against the same work on one instance's threads, timed in pairs
        "overhead_same_threads_pct": b.pooled_overhead_pct([paired_svc], [paired_ref]),
        "overhead_same_threads_passes": over_passes,
        "overhead_same_threads_paired_median_ms": round(float(np.median(
            np.asarray(paired_svc.latencies_ms) - np.asarray(paired_ref.latencies_ms))), 1),
        # as before session 28: the sweep's concurrency-1 block against the reference's block
        "overhead_same_threads_blocks_pct": b.pooled_overhead_pct([by_c[1]], [same_threads])
        if 1 in by_c and same_threads is not None else None,
        "served_threads": threads or None,
        "triton_kept_vs_resent_speedup": round(resent.seconds / kept.seconds, 3),
        **encoder, "served_vision": vision,
        "levels": [level.row() for level in rows], "items": len(labels), "bench": str(bench),
        "commit": _commit(), "machine": _machine(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


@app.command("pipeline")
def pipeline_command(
    ctx: typer.Context,
    frames: int = typer.Option(2000, min=1, help="Frames of the measured run."),
    rate: float = typer.Option(0.0, min=0.0, help="Camera frames/s of the run (0: the probe's drain rate)."),
    probe: int | None = typer.Option(None, min=0, help="Frames of the probe, sent as fast as possible "
                                                        "(default frames/10, at least 3 × workers × "
                                                        "in-flight, at most 200)."),
    rate_margin: float = typer.Option(1.0, min=0.1, max=2.0, help="Run rate = probe drain rate × this."),
    workers: int = typer.Option(1, min=1, help="Ingest worker processes in the group."),
    in_flight: int | None = typer.Option(None, min=1, help="Frames per worker at once "
                                                           "(default FOVEAL_INGEST_MAX_IN_FLIGHT)."),
    reference_batch: int = typer.Option(0, min=0, help="Batch of the in-process reference "
                                                       "(0: Triton's average batch during the run)."),
    source: Path | None = typer.Option(None, exists=True, file_okay=False,
                                       help="Dataset folder to replay (e.g. a FovealBench split); "
                                            "default: the camera's rendered bank."),
    bank_frames: int = typer.Option(32, min=1, help="Frames in the rendered bank (without --source)."),
    size: int | None = typer.Option(None, min=64, help="Long side of rendered frames (default 1024-2048)."),
    sequence_share: float = typer.Option(0.1667, min=0.0, max=1.0, help="Share of sequence records "
                                                                       "(FovealBench: 1 in 6)."),
    out: Path = typer.Option(Path("bench/results/pipeline.json"), help="JSON results."),
    plot: Path | None = typer.Option(None, help="Lag plot (PNG; default: <out>_lag.png)."),
    keep_db: bool = typer.Option(False, "--keep-db", help="Keep the run's database (default: dropped)."),
) -> None:
    """Camera → Kafka → ingest → reasoner → Triton → PostgreSQL at the highest sustainable rate."""
    from foveal.ingest.benchmark import PipelineOptions, run_pipeline

    settings = settings_of(ctx)
    options = PipelineOptions(
        frames=frames, rate_fps=rate or None, probe_frames=probe, rate_margin=rate_margin, workers=workers,
        in_flight=in_flight, reference_batch=reference_batch or None, source=source,
        bank_frames=bank_frames, size=size, sequence_share=sequence_share, keep_database=keep_db)
    plot_path = plot or out.with_name(out.stem + "_lag.png")
    summary = run_pipeline(settings, options, plot_path, say=lambda text: console.print(text))
    summary.update(commit=_commit(), machine=_machine())
    s = summary
    table = Table(title="foveal bench pipeline")
    for column in ("figure", "value"):
        table.add_column(column)
    rows = [
        ("frames (run / probe)", f"{s['frames']} / {s['probe_frames']}"),
        ("camera rate asked / sent", f"{s['rate_fps']:.2f} / {s['camera_fps']:.2f} frames/s"),
        ("sustained throughput", f"{s['frames_per_s']:.2f} frames/s"),
        ("in-process loop (batch {})".format(s["reference_batch"]), f"{s['inprocess_fps']:.2f} frames/s"),
        ("pipeline ratio (bar ≥ {:.2f})".format(s["bar_ratio"]), f"{s['pipeline_ratio']:.3f}"),
        ("end-to-end p50 / p95 / p99", f"{s['e2e_p50_ms']:.0f} / {s['e2e_p95_ms']:.0f} / "
                                       f"{s['e2e_p99_ms']:.0f} ms"),
        ("consumer lag max / slope", f"{s['lag_max']} records / {s['lag_slope_per_s']} records/s"),
        ("Triton average batch", str(s["triton_avg_batch"])),
        ("inspected / DLQ / lost / duplicates", f"{s['inspected']} / {s['dlq']} / {s['lost']} / "
                                                f"{s['duplicates']}"),
        ("committed to the end", str(s["committed_to_end"])),
        ("CPU ms per frame by part", ", ".join(f"{part} {ms:g}" for part, ms in sorted(
            s["cpu_ms_per_frame"].items(), key=lambda kv: -kv[1]))),
        ("CPU busy (all cores)", f"{s['cpu_busy_share']:.0%}"),
        ("lag plot", str(s["plot"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console(width=150).print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def _machine() -> dict[str, object]:
    return dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version())


def _commit() -> str:
    """HEAD of the checkout foveal runs from, `-dirty` with uncommitted changes to tracked files
    (untracked ones, such as this run's own outputs, change no code that ran)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=root).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, cwd=root).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("-dirty" if dirty.strip() else "")
