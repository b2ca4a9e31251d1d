"""Checkpoints `RUN/checkpoints/step-<k>/` (RunFolder.checkpoint_dir), written atomically, the last K kept.

    unet/          diffusers UNet2DConditionModel (safetensors)
    unet_ema/      EMA weights as a plain UNet2DConditionModel (when the run keeps EMA)
    optimizer.pt   AdamW state (loaded with weights_only=True)
    state.json     step, LR schedule state, EMA step, world size, batch, seed, and `loss`: the
                   run's first-step loss, the losses of the steps since the previous checkpoint
                   (mean, max, last) and the loss of the saved weights on a fixed batch, so the NaN
                   guard can name a checkpoint that had not diverged
    rng.pt         torch / numpy / python RNG states (batches use their own seeded generators)

Data position needs no state: batches are a function of the step (see data.py). The run's top-level
`unet/` and `unet_ema/` are always copies of a checkpoint's (export_checkpoint), never saved apart.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_dir, read_json, write_json
from ..runfolder import RunFolder, weights_hash

_RUN = RunFolder(Path())  # a checkpoint holds its U-Nets under the run folder's component names
UNET, UNET_EMA, STATE = _RUN.unet_dir.name, _RUN.unet_ema_dir.name, "state.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
GOOD_LOSS_FACTOR = 10.0  # a checkpoint whose recent losses exceeded 10x the first step's had diverged


def checkpoint_step(run: RunFolder, path: Path) -> int | None:
    """The step of a checkpoint folder (None for anything else, e.g. a '.tmp-' folder)."""
    try:
        step = int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
    return step if run.checkpoint_dir(step) == path else None


def checkpoint_dirs(run: RunFolder) -> list[Path]:
    if not run.checkpoints_dir.is_dir():
        return []
    found = [(checkpoint_step(run, p), p) for p in run.checkpoints_dir.iterdir() if (p / STATE).exists()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def latest_checkpoint(run: RunFolder) -> Path | None:
    found = checkpoint_dirs(run)
    return found[-1] if found else None


def ema_unet(unet, ema):
    """A plain UNet carrying the EMA weights (so `unet_ema/` loads with from_pretrained as-is)."""
    copy = type(unet).from_config(unet.config)
    ema.copy_to(copy.parameters())
    return copy


def loss_stats(initial: float | None, window: list[float]) -> dict:
    """The run's first-step loss and the losses since the previous checkpoint (JSON-safe: no NaN)."""
    finite = bool(window) and all(math.isfinite(x) for x in window)
    return {"initial": initial, "steps": len(window), "finite": finite,
            "mean": float(np.mean(window)) if finite else None, "max": max(window) if finite else None,
            "last": window[-1] if finite else None}


def save_checkpoint(run: RunFolder, step: int, unet, ema, optimizer, lr_scheduler, extra: dict, keep: int) -> Path:
    path = run.checkpoint_dir(step)
    with atomic_dir(path) as tmp:
        unet.save_pretrained(tmp / UNET, safe_serialization=True)
        if ema is not None:
            ema_unet(unet, ema).save_pretrained(tmp / UNET_EMA, safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        _, key, pos, _, _ = np.random.get_state()
        torch.save({"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(key.astype(np.int64)),
                    "numpy_pos": int(pos), "python": list(random.getstate()[1])}, tmp / "rng.pt")
        write_json(tmp / STATE, {
            "step": step, "lr_scheduler": lr_scheduler.state_dict(),
            "ema_step": ema.optimization_step if ema is not None else None, **extra,
        })
    # keep the last K, and always the newest good one: a diverging run must not prune its way out of it
    good = last_good_checkpoint(run)
    for old in checkpoint_dirs(run)[:-keep]:
        if old != good:
            shutil.rmtree(old, ignore_errors=True)
    return path


def export_checkpoint(run: RunFolder, checkpoint: Path) -> dict[str, str]:
    """Make the run's unet/ (and unet_ema/) copies of this checkpoint's; returns their weights hashes."""
    hashes = {}
    for name, target in ((UNET, run.unet_dir), (UNET_EMA, run.unet_ema_dir)):
        source = checkpoint / name
        if not source.is_dir():
            continue
        want = weights_hash(source)
        if not target.is_dir() or weights_hash(target) != want:
            with atomic_dir(target) as tmp:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
        hashes[name] = want
    return hashes


def weights_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    for name in (UNET, UNET_EMA):
        file = checkpoint / name / WEIGHTS
        if file.exists() and not all(bool(torch.isfinite(t).all()) for t in load_file(file).values()):
            return False
    return True


def is_good(checkpoint: Path) -> bool:
    """Finite weights; the losses that led to it, and the loss of its own weights on a fixed batch,
    finite and below GOOD_LOSS_FACTOR x the run's first-step loss."""
    stats = read_json(checkpoint / STATE).get("loss") or {}
    values = [stats.get("initial"), stats.get("max"), stats.get("saved_weights")]
    if any(v is None or not math.isfinite(v) for v in values):
        return False
    limit = GOOD_LOSS_FACTOR * max(stats["initial"], 1e-8)
    return stats["max"] <= limit and stats["saved_weights"] <= limit and weights_finite(checkpoint)


def last_good_checkpoint(run: RunFolder) -> Path | None:
    for checkpoint in reversed(checkpoint_dirs(run)):
        if is_good(checkpoint):
            return checkpoint
    return None


def load_checkpoint(path: Path, unet, ema, optimizer, lr_scheduler) -> dict:
    """Restore model, EMA, optimizer, LR schedule and RNG; returns state.json."""
    from safetensors.torch import load_file

    state = read_json(path / STATE)
    unet.load_state_dict(load_file(path / UNET / WEIGHTS))
    if ema is not None:
        weights = load_file(path / UNET_EMA / WEIGHTS)
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
