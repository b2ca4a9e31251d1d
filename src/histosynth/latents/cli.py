"""Commands of the latents stage: `train-vae` and `encode`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt, WorkspaceOpt, workspace_config

VaeOpt = typer.Option(None, "--vae", help="Hub id or folder of a diffusers AutoencoderKL/VQModel "
                                          "(the same as --set vae.pretrained=...).")


def _overrides(set_: list[str], vae: Optional[str]) -> list[str]:
    return list(set_) + ([f"vae.pretrained={vae}"] if vae else [])


def register(app: typer.Typer) -> None:
    @app.command("train-vae")
    def train_vae_cmd(
        workspace: Path = WorkspaceOpt,
        preset: Optional[str] = PresetOpt,
        config: Optional[Path] = ConfigOpt,
        set_: list[str] = SetOpt,
        vae: Optional[str] = VaeOpt,
    ) -> None:
        """Train an AutoencoderKL on the training tiles (or adopt --vae); set its scaling factor from the data."""
        from .vae import train_vae

        ws, cfg = workspace_config(workspace, preset, config, _overrides(set_, vae))
        typer.echo(train_vae(ws, cfg))

    @app.command("encode")
    def encode_cmd(
        workspace: Path = WorkspaceOpt,
        preset: Optional[str] = PresetOpt,
        config: Optional[Path] = ConfigOpt,
        set_: list[str] = SetOpt,
        vae: Optional[str] = VaeOpt,
    ) -> None:
        """Cache the VAE latents of every tile under WS/latents/<vae-id>/; `train` then uses them."""
        from .encode import encode_workspace

        ws, cfg = workspace_config(workspace, preset, config, _overrides(set_, vae))
        typer.echo(encode_workspace(ws, cfg))
