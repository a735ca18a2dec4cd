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
