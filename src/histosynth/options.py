"""Options shared by the stage commands, so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

WorkspaceOpt = typer.Option(..., "--workspace", "-w", help="Workspace folder (see docs/architecture.md).")
PresetOpt = typer.Option(None, "--preset", help="Preset: tiny-cpu, pathldm or rao-gupta (default: the workspace's).")
ConfigOpt = typer.Option(None, "--config", help="YAML file merged over the preset.")
SetOpt = typer.Option([], "--set", help="Override a config field, e.g. --set train.lr=1e-4 (repeatable).")


def workspace_config(workspace: Path, preset: Optional[str], config: Optional[Path], overrides: list[str]):
    """Open a workspace and resolve its config (saving it for a new workspace or a new preset)."""
    from .workspace import Workspace

    ws = Workspace(workspace)
    return ws, ws.ensure_config(preset=preset, file=config, overrides=overrides)
