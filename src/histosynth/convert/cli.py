"""Commands of the convert stage: `convert-pathldm`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert_pathldm(
    ckpt: Path = typer.Argument(..., help="PathLDM Lightning checkpoint (.ckpt)."),
    ldm_config: Optional[Path] = typer.Option(
        None, "--ldm-config", help="PathLDM's YAML for this checkpoint (e.g. plip_imagenet_finetune.yaml)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="histosynth YAML merged over the converted run's config (its sample section only)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a sample default of the run, e.g. --set sample.steps=20 (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Run folder to create (must not exist or be empty)."),
    text_encoder: Optional[str] = typer.Option(
        None, "--text-encoder", help="Hub id or folder of the text encoder to use instead of the checkpoint's own."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help="Allow full unpickling (runs code from the file) when tensors-only loading fails."),
) -> None:
    """Convert a PathLDM checkpoint into a run folder for `sample`, `evaluate` and `train`.

    The run's model, schedule and text settings come from the checkpoint and PathLDM's YAML
    (--ldm-config); --config/--set may change only its sampling defaults (the sample section).
    """
    from ..console import HistosynthError
    from .pathldm import convert_pathldm as run, is_ldm_yaml

    if ldm_config is None:
        if config is not None and is_ldm_yaml(config):  # the 0.1 spelling
            raise HistosynthError(f"{config}: PathLDM's YAML is now given with --ldm-config "
                                  f"(--config is histosynth's own config)")
        raise HistosynthError("convert-pathldm: --ldm-config PATHLDM.yaml is required")
    run(ckpt, ldm_config, out, text_encoder=text_encoder, trust_checkpoint=trust_checkpoint,
        config_file=config, overrides=overrides)


def register(app: typer.Typer) -> None:
    app.command("convert-pathldm")(convert_pathldm)
