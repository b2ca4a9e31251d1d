"""Checkpoints `runs/<name>/checkpoints/step-<k>/`, written atomically, the last K kept.

    unet/          diffusers UNet2DConditionModel (safetensors)
    unet_ema/      EMA weights as a plain UNet2DConditionModel (when the run keeps EMA)
    optimizer.pt   AdamW state (loaded with weights_only=True)
    state.json     step, LR schedule state, EMA step, world size, batch, seed
    rng.pt         torch / numpy / python RNG states (batches use their own seeded generators)

Data position needs no state: batches are a function of the step (see data.py).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_dir, read_json, write_json


def checkpoint_dirs(run: Path) -> list[Path]:
    found = [p for p in (run / "checkpoints").glob("step-*") if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoint_dirs(run)
    return found[-1] if found else None


def save_unet(unet, path: Path) -> None:
    with atomic_dir(path) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)


def ema_unet(unet, ema):
    """A plain UNet carrying the EMA weights (so `unet_ema/` loads with from_pretrained as-is)."""
    copy = type(unet).from_config(unet.config)
    ema.copy_to(copy.parameters())
    return copy


def save_checkpoint(run: Path, step: int, unet, ema, optimizer, lr_scheduler, extra: dict, keep: int) -> Path:
    path = run / "checkpoints" / f"step-{step}"
    with atomic_dir(path) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if ema is not None:
            ema_unet(unet, ema).save_pretrained(tmp / "unet_ema", safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        _, key, pos, _, _ = np.random.get_state()
        torch.save({"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(key.astype(np.int64)),
                    "numpy_pos": int(pos), "python": list(random.getstate()[1])}, tmp / "rng.pt")
        write_json(tmp / "state.json", {
            "step": step, "lr_scheduler": lr_scheduler.state_dict(),
            "ema_step": ema.optimization_step if ema is not None else None, **extra,
        })
    for old in checkpoint_dirs(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, unet, ema, optimizer, lr_scheduler) -> dict:
    """Restore model, EMA, optimizer, LR schedule and RNG; returns state.json."""
    from safetensors.torch import load_file

    state = read_json(path / "state.json")
    unet.load_state_dict(load_file(path / "unet" / "diffusion_pytorch_model.safetensors"))
    if ema is not None:
        weights = load_file(path / "unet_ema" / "diffusion_pytorch_model.safetensors")
        names = [n for n, _ in unet.named_parameters()]
        ema.shadow_params = [weights[n].clone() for n in names]
        ema.optimization_step = int(state["ema_step"])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", rng["numpy_key"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in rng["python"]), None))
    return state
