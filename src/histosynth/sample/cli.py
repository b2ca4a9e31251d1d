"""Commands of the sample stage: `sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer



def sample(
    run: Path = typer.Option(..., "--run", help="Run folder (made by train or convert-pathldm; may live anywhere)."),
    workspace: Optional[Path] = typer.Option(
        None, "--workspace", "-w", help="Workspace whose summaries and tiles --from-summaries uses (default: the "
                                        "workspace the run was trained on, as the run records it)."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="Take the sampling defaults (the sample section) from this preset instead of the "
                               "run's recorded config; the model, text condition and schedule are always the run's."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file merged over the run's config (only its sample section may differ)."),
    set_: list[str] = typer.Option([], "--set", help="Override a sample field, e.g. --set sample.steps=20 (repeatable)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts, one per line (.txt) or {'prompt': ...} per line (.jsonl)."),
    from_summaries: bool = typer.Option(False, "--from-summaries", help="One prompt per sampled tile of --split: its report summary and scores."),
    split: str = typer.Option("test", "--split", help="Split whose reports condition the images (with --from-summaries)."),
    n: int = typer.Option(16, "--n", help="Number of images."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddim or dpmpp (default: sample.sampler)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps, >= 1 (default: sample.steps)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale >= 0; 1 = none (default: sample.guidance)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM noise >= 0; 0 is deterministic (default: sample.eta)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Image i gets seed + i (default: sample.seed)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per U-Net batch (default: sample.batch_size)."),
    budget: Optional[int] = typer.Option(None, "--budget", help="Summary budget, only for runs that record none (histosynth 0.1)."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height in px, a multiple of the tile size (default: one tile); "
                                                                "larger images are denoised in overlapping windows."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width in px, a multiple of the tile size (default: one tile)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/samples/<settings>)."),
    cfg: Optional[str] = typer.Option(None, "--cfg", hidden=True),
) -> None:
    """Generate images from a run: PNGs with provenance, metadata.jsonl and a contact sheet."""
    from ..config import ConfigError
    from ..console import HistosynthError
    from ..runfolder import RunFolder
    from .generate import read_prompts, resolve_config, sample_run

    if cfg is not None:
        raise ConfigError("--cfg: renamed --guidance (the guidance scale), e.g. --guidance 1.5")
    if (prompts is None) == (not from_summaries):
        raise HistosynthError("sample: give exactly one of --prompts FILE or --from-summaries")
    folder = RunFolder(run).require()
    resolved = resolve_config(folder, preset, config, list(set_))
    texts = read_prompts(prompts) if prompts else None
    sample_run(run, texts, n, sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=seed,
               batch_size=batch, from_summaries=from_summaries, split=split, out_dir=out, budget=budget,
               workspace=workspace, height=height, width=width, config=resolved)


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
