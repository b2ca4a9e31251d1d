"""Commands of the serve stage: `serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    run: Path = typer.Option(..., "--run", help="Run folder (WS/runs/<name>)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                             help="Workspace: adds the Browse tab and the nearest training tiles."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; not loopback needs "
                             "HISTOSYNTH_APP_USER and HISTOSYNTH_APP_PASSWORD."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
) -> None:
    """A local web app: generate from a run, see each image beside its nearest training tile, browse real tiles."""
    from .server import serve as start

    start(run, workspace, host, port)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
