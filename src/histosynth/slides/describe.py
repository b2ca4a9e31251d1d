"""`histosynth describe`: patch descriptors for the tiles of an existing workspace.

New tiling computes them as it reads (tiler.py); this command fills in slides tiled before that, or
all slides with `force`. Each slide's HDF5 gains a `descriptors` group; the file is rewritten under
a temporary name and renamed into place, so a killed run leaves every slide either as it was or
complete. Then the tile index is rebuilt (desc_* and level_* columns).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..config import HistoSynthConfig
from ..console import info, make_progress
from ..fileio import atomic_path
from ..workspace import Workspace

BATCH = 256   # tiles read at once


def has_descriptors(path: Path) -> bool:
    import h5py

    from .descriptors import DESCRIPTORS

    with h5py.File(path, "r") as f:
        group = f.get("descriptors")
        return group is not None and all(name in group for name in DESCRIPTORS)


def describe_slide(path: Path) -> int:
    """Compute and store the descriptors of one slide's tiles; returns the number of tiles."""
    import h5py

    from .descriptors import DESCRIPTORS, describe, write_descriptors

    with h5py.File(path, "r") as f:
        imgs, mpp = f["imgs"], float(f["coords"].attrs["mpp"])
        frames = [describe(imgs[i:i + BATCH], mpp) for i in range(0, len(imgs), BATCH)]
    values = {name: np.concatenate([fr[name].to_numpy() for fr in frames]) for name in DESCRIPTORS}
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            write_descriptors(f, values)
    return len(values["tissue_fraction"])


def describe_workspace(ws: Workspace, cfg: HistoSynthConfig, force: bool = False) -> dict:
    from .index import finished_slides, write_index

    files = finished_slides(ws)
    todo = [p for p in files if force or not has_descriptors(p)]
    info(f"{len(files)} tiled slides: {len(files) - len(todo)} already described, {len(todo)} to describe")
    tiles = 0
    with make_progress() as progress:
        task = progress.add_task("describing slides", total=len(todo))
        for path in todo:
            tiles += describe_slide(path)
            progress.advance(task)
    index = write_index(ws, cfg)
    return {"slides": len(files), "described": len(todo), "tiles_described": tiles, "total_tiles": len(index)}
