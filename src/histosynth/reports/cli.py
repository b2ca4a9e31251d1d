"""Commands of the reports stage: `reports`, `summarize`, `summary-stats` (parse, then call)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt, WorkspaceOpt, workspace_config


def register(app: typer.Typer) -> None:
    app.command("reports")(reports)
    app.command("summarize")(summarize)
    app.command("summary-stats")(summary_stats)


def reports(
    source: Path = typer.Argument(..., help="TCGA-Reports CSV (patient_filename, text), JSONL, or a folder of .txt files."),
    workspace: Path = WorkspaceOpt,
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Ingest, clean and link pathology reports to tiles by TCGA barcode (rerun after tiling to relink)."""
    from .ingest import ingest_reports

    ws, cfg = workspace_config(workspace, preset, config, set_)
    ingest_reports(ws, cfg, source)


def summarize(
    workspace: Path = WorkspaceOpt,
    budget: Optional[int] = typer.Option(None, "--budget", help="Token budget (default: summaries.budget)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="extractive (default, offline) or openai (opt-in)."),
    model: Optional[str] = typer.Option(None, "--model", help="Chat model of the openai backend."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Any OpenAI-compatible server (vLLM, Ollama, llama.cpp)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt template: histosynth-v1 or paper."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Count tokens with this tokenizer (default: the text encoder's)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Requests in flight."),
    refresh: bool = typer.Option(False, "--refresh", help="Ignore the cache and redo every case."),
    regenerate: Optional[str] = typer.Option(None, "--regenerate", help="Redo these cases: CASE,CASE,..."),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Token-budgeted, complete summaries of every report (cached, resumable)."""
    from ..console import info
    from .summarize import check_budget, summarize_workspace

    if budget is not None:
        check_budget(budget)  # before anything is written: one line naming the option, exit 2
    flags = {"model": model, "base_url": base_url, "prompt": prompt, "tokenizer": tokenizer,
             "concurrency": concurrency, "backend": backend}
    flags = {k: v for k, v in flags.items() if v is not None}
    check_flags(flags)
    run_only = [o for o in set_ if o.replace(" ", "").startswith("summaries.base_url=")]
    for item in run_only:  # a URL may carry a key: like --base-url, it applies to this run only
        flags["base_url"] = item.split("=", 1)[1] or None
    ws, cfg = workspace_config(workspace, preset, config, [o for o in set_ if o not in run_only])
    # Flags apply to this run only: never saved as workspace defaults (a --base-url may carry a key).
    cfg = cfg.model_copy(update={"summaries": cfg.summaries.model_copy(update=flags)})
    budget = cfg.summaries.budget if budget is None else budget
    cases = [c.strip() for c in (regenerate or "").split(",") if c.strip()]
    table = summarize_workspace(ws, cfg, budget, backend=cfg.summaries.backend, refresh=refresh, regenerate=cases,
                                frame=False)
    info(f"summarize: {len(table)} summaries -> {ws.summaries_path(budget)}")


def check_flags(flags: dict) -> None:
    """Validate command-line values by the config's rules (summaries section); one line naming the option."""
    from pydantic import ValidationError

    from ..config import ConfigError, SummariesConfig

    for name, value in flags.items():
        try:
            SummariesConfig(**{name: value})
        except ValidationError as exc:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: {exc.errors()[0]['msg']}") from None


def summary_stats(
    workspace: Path = WorkspaceOpt,
    budget: Optional[list[int]] = typer.Option(None, "--budget", help="Budgets to report (default: all on disk)."),
) -> None:
    """Token-count histogram, share within budget, attempts per summary, findings kept."""
    from ..console import console
    from ..fileio import write_json
    from ..workspace import Workspace
    from .stats import workspace_stats

    from .summarize import check_budget

    for b in budget or []:
        check_budget(b)
    ws = Workspace(workspace)
    stats = workspace_stats(ws, budget or None)
    for s in stats:
        console.print(f"[bold]budget {s['budget']}[/bold]: {s['cases']} summaries, {s['within_budget']:.0%} within budget, "
                      f"mean {s['tokens_mean']:.1f} / max {s['tokens_max']} tokens, findings kept {s['findings_kept_mean']:.2f}, "
                      f"attempts {s['attempts']}, statuses {s['statuses']}")
        width = max(s["histogram"].values(), default=1)
        for label, n in s["histogram"].items():
            console.print(f"  {label:>9} tokens | {'#' * max(1, round(40 * n / width))} {n}")
    write_json(ws.summary_stats_path, stats)
