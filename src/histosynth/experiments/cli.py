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
    data: str = typer.Option("auto", "--data", help="auto: real H&E when the data registry has it, else the "
                                                     "built-in sample; real; sample."),
) -> None:
    """Run the whole pipeline (tile -> ... -> evaluate) and write an HTML report; resumes if rerun."""
    from .demo import run_demo

    run_demo(out, slides=slides or None, reports=reports, preset=preset, overrides=overrides, data=data)


def _csv(option: str, value: Optional[str], cast=str) -> Optional[list]:
    from ..config import ConfigError

    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {value}: expected a comma-separated list, e.g. 20,35") from None


def ablate(
    workspace: Path = WorkspaceOpt,
    grid: Optional[Path] = typer.Option(None, "--grid", help="YAML file with the axes (flags given here win)."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Comma-separated summary budgets (tokens)."),
    encoders: Optional[str] = typer.Option(None, "--encoders", help="Text encoders: minilm, random-clip, random-bert or folders."),
    fields: Optional[str] = typer.Option(None, "--fields", help="Condition templates: summary, summary+tumor-til, summary+descriptors, descriptors, none."),
    contents: Optional[str] = typer.Option(None, "--contents", help="Summary content: full, no-type, no-grade, no-architecture, type-only."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Training seeds: a count N (0..N-1) or a comma-separated list."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Baseline cell name (default: the first value of every axis)."),
    n_samples: Optional[int] = typer.Option(None, "--n", help="Images per cell and seed (default: one per split tile)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split whose tiles condition the images (default test)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per training process (default 1)."),
    null_cell: Optional[bool] = typer.Option(None, "--null-cell/--no-null-cell",
                                             help="Add a copy of the baseline trained with other seeds (seed + 1000): "
                                                  "the noise check, which must not be flagged."),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """The ablation grid: budgets x encoders x fields x contents x seeds, each cell trained in its own process."""
    from .ablate import load_grid, run_grid

    seed_list = _csv("--seeds", seeds, int)
    if seed_list is not None and len(seed_list) == 1 and "," not in (seeds or ""):
        seed_list = list(range(seed_list[0]))  # `--seeds 3` means seeds 0, 1, 2
    spec = load_grid(grid, budgets=_csv("--budgets", budgets, int), encoders=_csv("--encoders", encoders),
                     fields=_csv("--fields", fields), contents=_csv("--contents", contents), seeds=seed_list,
                     baseline=baseline, n=n_samples, split=split, threads=threads,
                     null_cell=null_cell)
    from ..workspace import Workspace

    Workspace(workspace).require(Workspace(workspace).tile_index_path, "tile")  # before any file is written
    ws, cfg = workspace_config(workspace, preset, config, overrides)
    typer.echo(run_grid(ws, cfg, spec, preset=preset, overrides=overrides))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("ablate")(ablate)
