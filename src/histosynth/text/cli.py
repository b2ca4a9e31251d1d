"""Commands of the text stage: `embed`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt, WorkspaceOpt, workspace_config


def embed(
    workspace: Path = WorkspaceOpt,
    budget: Optional[int] = typer.Option(None, "--budget", help="Summary token budget to embed (default: summaries.budget)."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Encoder name, hub id, open_clip id or local folder (default: text.encoder)."),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Encode every tile's condition text (scores + summary) once per unique text into safetensors shards."""
    from .embed import embed_workspace

    ws, cfg = workspace_config(workspace, preset, config, overrides)
    embed_workspace(ws, cfg, budget or cfg.summaries.budget, encoder=encoder)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
