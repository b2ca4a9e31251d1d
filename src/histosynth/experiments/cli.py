"""Commands of the experiments stage: `demo` and `ablate` (they only parse and call)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt, WorkspaceOpt, workspace_config


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the workspace, samples and report."),
    slides: Optional[list[Path]] = typer.Option(None, "--slides", help="Slide files or folders (default: the built-in sample)."),
    reports: Optional[Path] = typer.Option(None, "--reports", help="Reports file (CSV, JSONL) for --slides."),
    preset: str = typer.Option("tiny-cpu", "--preset", help="Preset: tiny-cpu, pathldm or rao-gupta."),
    overrides: list[str] = SetOpt,
) -> None:
    """Run the whole pipeline (tile -> ... -> evaluate) and write an HTML report; resumes if rerun."""
    from .demo import run_demo

    run_demo(out, slides=slides or None, reports=reports, preset=preset, overrides=overrides)


def ablate(
    workspace: Path = WorkspaceOpt,
    budgets: str = typer.Option("20,35,50,154", "--budgets", help="Comma-separated summary budgets (tokens)."),
    seeds: int = typer.Option(1, "--seeds", help="Training seeds per budget (0 .. N-1)."),
    n_samples: Optional[int] = typer.Option(None, "--n", help="Generated images per run (default: one per test tile)."),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """The token-budget ablation: per budget summarize, embed, train (own process), sample, evaluate."""
    from ..config import ConfigError
    from .ablate import run_ablation

    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--budgets {budgets}: expected comma-separated integers, e.g. 20,35,50") from None
    ws, cfg = workspace_config(workspace, preset, config, overrides)
    run_ablation(ws, cfg, budget_list, seeds=seeds, preset=preset, overrides=overrides, n_samples=n_samples)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("ablate")(ablate)
