"""Commands of the sample stage: `sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def sample(
    run: Path = typer.Option(..., "--run", help="Run folder (WS/runs/<name>)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts, one per line (.txt) or {'prompt': ...} per line (.jsonl)."),
    from_summaries: bool = typer.Option(False, "--from-summaries", help="One prompt per sampled tile of --split: its report summary and scores."),
    split: str = typer.Option("test", "--split", help="Split whose reports condition the images (with --from-summaries)."),
    n: int = typer.Option(16, "--n", help="Number of images."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddim or dpmpp (default: the run's preset)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the run's preset)."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale; 1 = none (default: the run's preset)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM noise; 0 is deterministic."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Image i gets seed + i."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per U-Net batch."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Summary budget, if the run does not record it."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/samples/<settings>)."),
) -> None:
    """Generate images from a trained run: PNGs with provenance, metadata.jsonl and a contact sheet."""
    from ..console import HistosynthError
    from .generate import read_prompts, sample_run

    if (prompts is None) == (not from_summaries):
        raise HistosynthError("sample: give exactly one of --prompts FILE or --from-summaries")
    sample_run(run, read_prompts(prompts) if prompts else None, n, sampler=sampler, steps=steps, guidance=cfg,
               eta=eta, seed=seed, batch_size=batch, from_summaries=from_summaries, split=split, out_dir=out,
               budget=budget)


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
