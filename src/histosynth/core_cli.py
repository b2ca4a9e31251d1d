"""Commands of the core: `sample-data`."""

from __future__ import annotations

from pathlib import Path

import typer


def sample_data(out: Path = typer.Argument(..., help="Folder to write slides/, reports.csv and README.txt into.")) -> None:
    """Write the built-in sample: pyramidal TIFF pseudo-slides of real colon tissue and their reports."""
    from .console import info
    from .manifest import recording
    from .sample_data import make_sample

    with recording("sample-data", out) as manifest:
        summary = make_sample(out)
        manifest.results.update(summary)
    info(f"wrote {len(summary['slides'])} slides and {summary['reports']}")


def register(app: typer.Typer) -> None:
    app.command("sample-data")(sample_data)
