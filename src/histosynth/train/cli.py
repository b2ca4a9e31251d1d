"""Commands of the train stage: `train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt, WorkspaceOpt, workspace_config


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        workspace: Path = WorkspaceOpt,
        budget: Optional[int] = typer.Option(None, "--budget", help="Token budget of the summaries (default: summaries.budget)."),
        name: Optional[str] = typer.Option(None, "--name", help="Run name under WS/runs/ (default: budget-<N>)."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the run's last checkpoint."),
        preset: Optional[str] = PresetOpt,
        config: Optional[Path] = ConfigOpt,
        set_: list[str] = SetOpt,
    ) -> None:
        """Train the text-conditioned latent diffusion U-Net (accelerate launch for several processes)."""
        from .trainer import train

        ws, cfg = workspace_config(workspace, preset, config, list(set_))
        typer.echo(train(ws, cfg, budget if budget is not None else cfg.summaries.budget, run_name=name, resume=resume))
