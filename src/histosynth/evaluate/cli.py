"""Commands of the evaluate stage: `evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt


def evaluate(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Workspace: the real set is its --real-split tiles, the training tiles its train split, defaults its config's evaluate section."),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: list[str] = SetOpt,
    fake: str = typer.Option(..., "--fake", help="Generated images: a `histosynth sample` folder, any folder or .npz."),
    real_split: str = typer.Option("test", "--real-split", help="The workspace split that is the real set (with --workspace)."),
    real: Optional[str] = typer.Option(None, "--real", help="Real images without a workspace: a folder (class sub-folders give labels) or .npz statistics. `WS:split` is an alias of --workspace WS --real-split split."),
    train: Optional[str] = typer.Option(None, "--train", help="Training tiles (memorization, real-vs-real references, class fidelity): a folder (default: the workspace's train split)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: FAKE-eval next to FAKE, or ./eval for .npz)."),
    n: Optional[int] = typer.Option(None, "--n", min=2, help="Images per side, a seeded subset (default: evaluate.n, all)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated subset of fid,kid,pr,fd,stain,memorization,fidelity,descriptors,c2st,classes (default: evaluate.metrics)."),
    features: list[str] = typer.Option([], "--features", help="Encoder for FD_<name>/KID_<name>: `inception`, a timm/transformers/open_clip folder or a cached hub id, optionally NAME=SPEC (repeatable)."),
    resize: Optional[str] = typer.Option(None, "--resize", help="When real and generated sizes differ: real-to-fake or fake-to-real, optionally :bicubic|bilinear|lanczos|box|nearest (default bicubic)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Microns per pixel of the compared images, for the descriptors (default: the workspace's slides.mpp)."),
    crop: Optional[int] = typer.Option(None, "--crop", min=16, help="Centre crop in px before all metrics (default: evaluate.crop, none)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Images per feature batch (default: evaluate.batch_size)."),
    seed: int = typer.Option(0, "--seed", help="Subsets, bootstraps and the C2ST/class classifiers."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", envvar="HISTOSYNTH_INCEPTION",
                                                     help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights)."),
    allow_unverified_weights: bool = typer.Option(False, "--allow-unverified-weights", help="Accept Inception weights with another sha256 (tests only: FIDs not comparable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cpu)."),
) -> None:
    """Generated vs real tiles: FID/KID/precision-recall, FD/KID with any encoder, stain, memorization and the
    weight-free fidelity metrics with their real-vs-real references: eval.json + report.md."""
    from ..config import EvaluateConfig
    from .run import BadOption, evaluate as run_evaluate

    if workspace is not None and real is not None:
        raise BadOption("evaluate: give --workspace (with --real-split) or --real, not both")
    if workspace is None and real is None:
        raise BadOption("evaluate: name the real set: --workspace WS [--real-split test] or --real FOLDER|NPZ")
    if workspace is None and (preset or config or overrides):
        raise BadOption("evaluate: --preset/--config/--set need --workspace")
    cfg = EvaluateConfig()
    if workspace is not None:
        from ..workspace import SPLITS, Workspace

        if real_split not in SPLITS:
            raise BadOption(f"--real-split {real_split}: choose from {', '.join(SPLITS)}")
        ws = Workspace(workspace)
        cfg = ws.config(preset=preset, file=config, overrides=overrides).evaluate
        real = f"{ws.root}:{real_split}"
    fake_path = Path(fake)
    out = out or (fake_path.with_name(fake_path.name + "-eval") if fake_path.is_dir() else Path("eval"))
    run_evaluate(real, fake, out, metrics=metrics.split(",") if metrics else cfg.metrics, n=n or cfg.n, train=train,
                 inception_weights=inception_weights or cfg.inception_weights, crop=crop or cfg.crop,
                 batch_size=batch or cfg.batch_size, allow_unverified_weights=allow_unverified_weights, device=device,
                 features=features, resize=resize, mpp=mpp, seed=seed)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
