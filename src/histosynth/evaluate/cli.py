"""Commands of the evaluate stage: `evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate(
    real: str = typer.Option(..., "--real", help="Real images: a folder, a workspace split (WS:test) or .npz statistics."),
    fake: str = typer.Option(..., "--fake", help="Generated images: a `histosynth sample` folder, any folder or .npz."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: FAKE-eval next to FAKE, or ./eval for .npz)."),
    n: Optional[int] = typer.Option(None, "--n", help="Images per side (default: evaluate.n, all)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated subset of fid,kid,pr,stain,memorization (default: all)."),
    train: Optional[str] = typer.Option(None, "--train", help="Training tiles for the memorization check (default: WS:train when REAL is WS:test)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Centre crop in px before all metrics (default: evaluate.crop, none)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per Inception batch (default: evaluate.batch_size)."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", envvar="HISTOSYNTH_INCEPTION",
                                                     help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights)."),
    allow_unverified_weights: bool = typer.Option(False, "--allow-unverified-weights", help="Accept Inception weights with another sha256 (tests only: FIDs not comparable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cpu)."),
    features: list[str] = typer.Option([], "--features", help="Encoder for FD_<name>/KID_<name>: `inception`, a timm/transformers/open_clip folder or a cached hub id, optionally NAME=SPEC (repeatable)."),
) -> None:
    """FID/KID/precision-recall, stain distance and memorization of generated vs real tiles: eval.json + report.md."""
    from .run import evaluate as run_evaluate, section_of

    cfg = section_of(real)  # the workspace's evaluate section when REAL is WS:split, else the defaults
    fake_path = Path(fake)
    out = out or (fake_path.with_name(fake_path.name + "-eval") if fake_path.is_dir() else Path("eval"))
    run_evaluate(real, fake, out, metrics=metrics.split(",") if metrics else cfg.metrics, n=n or cfg.n, train=train,
                 inception_weights=inception_weights or cfg.inception_weights, crop=crop or cfg.crop,
                 batch_size=batch or cfg.batch_size, allow_unverified_weights=allow_unverified_weights, device=device,
                 features=features)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
