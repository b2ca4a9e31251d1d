"""Commands of the convert stage: `convert-pathldm`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert_pathldm(
    ckpt: Path = typer.Argument(..., help="PathLDM Lightning checkpoint (.ckpt)."),
    config: Path = typer.Option(
        ..., "--config", help="PathLDM's YAML for this checkpoint (e.g. plip_imagenet_finetune.yaml)."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (must not exist or be empty)."),
    text_encoder: Optional[str] = typer.Option(
        None, "--text-encoder", help="Hub id or folder of the text encoder to use instead of the checkpoint's own."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help="Allow full unpickling (runs code from the file) when tensors-only loading fails."),
) -> None:
    """Convert a PathLDM checkpoint into a run folder for `sample`, `evaluate` and `train`."""
    from .pathldm import convert_pathldm as run

    run(ckpt, config, out, text_encoder=text_encoder, trust_checkpoint=trust_checkpoint)


def register(app: typer.Typer) -> None:
    app.command("convert-pathldm")(convert_pathldm)
