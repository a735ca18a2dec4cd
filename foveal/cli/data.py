"""`foveal data generate | bench | import`: plant data in foveal's dataset format.

`generate` renders frames (and sequences) with exact labels; `bench` builds FovealBench's fixed,
seeded splits; `import` brings real plant data in (MVTec AD folders, COCO files). Every command
writes a new folder atomically: on any error nothing is left behind.
"""

from __future__ import annotations

import enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from foveal.domain import Taxonomy

app = typer.Typer(help="Render, benchmark and import plant data.", no_args_is_help=True)
console = Console()


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="New dataset folder (must not exist or be empty)."),
    n: int = typer.Option(200, "--n", min=0, help="Number of single frames."),
    sequences: int = typer.Option(0, "--sequences", min=0, help="Number of multi-frame sequences."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same data, byte for byte."),
    products: list[str] = typer.Option([], "--product", help="Limit to these products (repeatable); also "
                                       "the held-out surfaces wood, ceramic_tile, rendered only when named."),
    defect_share: float = typer.Option(0.7, "--defect-share", min=0.0, max=1.0,
                                       help="Share of frames with a defect."),
    size: int | None = typer.Option(None, "--size", help="Long side in px (default: 1024–2048 drawn)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Processes (default: all cores)."),
    jpg: bool = typer.Option(False, "--jpg", help="Store JPEG (quality 95) instead of PNG."),
    preview: bool = typer.Option(False, "--preview", help="Also write preview.png, a contact sheet."),
) -> None:
    """Render plant frames (and sequences) with exact labels into a new dataset folder."""
    from foveal.plant.generate import generate as render
    from foveal.plant.surfaces import PRODUCTS

    render(out, n=n, seed=seed, products=products or tuple(PRODUCTS), defect_share=defect_share,
           sequences=sequences, workers=workers, image_ext=".jpg" if jpg else ".png",
           preview=preview, size=size)
    console.print(f"labels: {out / 'labels.jsonl'}")
    if preview:
        console.print(f"preview: {out / 'preview.png'}")


@app.command()
def bench(
    out: Path = typer.Option(..., "--out", help="Folder to build into; each split goes to OUT/<split>."),
    splits: list[str] = typer.Option(["dev", "test"], "--split", help="dev and/or test (repeatable)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Processes (default: all cores)."),
    record: bool = typer.Option(False, "--record", help="Maintainers: write the checksums into the repo."),
) -> None:
    """Build FovealBench (fixed seeds) and check each split against its committed checksum."""
    from foveal.plant import fovealbench

    for name in splits:
        fovealbench.split(name)  # an unknown split fails before anything is rendered
    expected = fovealbench.expected_checksums()
    failed = False
    for name in splits:
        digest = fovealbench.build(out / name, name, workers=workers)
        if record:
            fovealbench.record(name, digest)
            console.print(f"{name}: recorded labels sha256 {digest}")
        elif name not in expected:
            console.print(f"[yellow]{name}[/]: labels sha256 {digest} (no committed checksum yet)")
        elif expected[name] == digest:
            console.print(f"[green]{name}[/]: labels match the committed checksum {digest}")
        else:
            failed = True
            console.print(f"[bold red]{name}[/]: labels sha256 {digest} != committed {expected[name]}")
    if failed:
        raise typer.Exit(1)


class ImportFormat(enum.StrEnum):
    MVTEC = "mvtec"
    COCO = "coco"


@app.command(name="import")
def import_(
    source: Path = typer.Argument(..., exists=True, help="MVTec folder, or COCO JSON file."),
    out: Path = typer.Option(..., "--out", help="New dataset folder (must not exist or be empty)."),
    fmt: ImportFormat = typer.Option(..., "--format", help="Layout of SOURCE."),
    mapping: Path | None = typer.Option(None, "--mapping", exists=True,
                                        help="JSON/TOML file mapping source type names to defect types."),
    product: str | None = typer.Option(None, "--product",
                                       help="Product name (default: category / file stem)."),
    images_dir: Path | None = typer.Option(None, "--images-dir", help="COCO: folder of the images."),
    extra_types: list[str] = typer.Option([], "--extra-type",
                                          help="A product line's own defect type (repeatable)."),
) -> None:
    """Import real plant data: `--format mvtec DIR` or `--format coco FILE`."""
    from foveal.plant import importers

    names = importers.load_mapping(mapping) if mapping else None
    try:
        taxonomy = Taxonomy().extend(extra_types)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--extra-type") from None
    with console.status(f"importing {source}…"):
        if fmt is ImportFormat.MVTEC:
            report = importers.import_mvtec(source, out, names, product, taxonomy=taxonomy)
        else:
            report = importers.import_coco(source, out, images_dir, names, product, taxonomy=taxonomy)
    table = Table(title=f"imported {report.items} items into {out}", title_justify="left")
    table.add_column("defect type")
    table.add_column("items", justify="right")
    for name, count in sorted(report.by_type.items()):
        table.add_row(name, str(count))
    console.print(table)
    for skip in report.skipped:
        console.print(f"[dim]skipped {skip.path}: {skip.reason}[/]")
    for drop in report.dropped:
        console.print(f"[yellow]dropped annotation[/] {drop.path}: {drop.reason}")
