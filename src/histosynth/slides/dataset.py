"""A torch Dataset over the tile index: one split, dihedral augmentation, optional random crops.

Histology has no preferred orientation, so the 8 symmetries of the square (4 rotations x flip)
are free augmentation; `dihedral(image, k)` applies one chosen symmetry deterministically (the
latents stage caches all 8 variants of a tile).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..console import HistosynthError
from ..workspace import SPLITS, Workspace
from .store import TileStore


def dihedral(image, k: int):
    """Symmetry k in 0..7 of the last two axes (H, W): rotate by 90 * (k % 4) degrees, then mirror
    left-right if k >= 4. Works on torch tensors ([..., H, W]) and numpy arrays; k = 0 is identity."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral: k must be in 0..7, got {k}")
    if hasattr(image, "rot90"):  # torch
        out = image.rot90(k % 4, dims=(-2, -1))
        return out.flip(-1) if k >= 4 else out
    out = np.rot90(image, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if k >= 4 else out)


class TileDataset:
    """Item: {"image": float32 [3, H, W] in [-1, 1], "tile_id": int, "case_id": str}."""

    def __init__(self, ws: Workspace | str | Path, split: str | None = "train", dihedral: bool = True,
                 crop: int | None = None, seed: int = 0):
        from .index import read_index

        if split is not None and split not in SPLITS:
            raise HistosynthError(f"split must be one of {SPLITS} or None, got {split!r}")
        ws = ws if isinstance(ws, Workspace) else Workspace(ws)
        index = read_index(ws)
        if split is not None:
            index = index[index["split"] == split]
        if len(index) == 0:
            raise HistosynthError(f"{ws.tile_index_path}: no tiles in split {split!r}")
        size = int(index["size"].iloc[0])
        if crop is not None and not 0 < crop <= size:
            raise HistosynthError(f"crop {crop} must be between 1 and the tile size {size}")
        self.tile_ids = index["tile_id"].to_numpy(np.int64)
        self.case_ids = index["case_id"].to_numpy()
        self.store = TileStore(ws, index=index)
        self.augment, self.crop, self.seed = dihedral, crop, seed
        self._rng_pid: tuple | None = None

    def __len__(self) -> int:
        return len(self.tile_ids)

    def _rng(self) -> np.random.Generator:
        # One stream per process, seeded from `seed` and torch's per-worker seed, so DataLoader
        # workers draw different augmentations and a seeded run repeats itself.
        if self._rng_pid is None or self._rng_pid[0] != os.getpid():
            import torch

            info = torch.utils.data.get_worker_info()
            base = info.seed if info is not None else torch.initial_seed()
            self._rng_pid = (os.getpid(), np.random.default_rng([self.seed, base % (1 << 63)]))
        return self._rng_pid[1]

    def __getitem__(self, i: int) -> dict:
        import torch

        tile_id = int(self.tile_ids[i])
        pixels = self.store.get([tile_id])[0]
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div(127.5).sub(1.0)
        if self.crop is not None and self.crop < image.shape[-1]:
            top, left = self._rng().integers(0, image.shape[-1] - self.crop + 1, size=2)
            image = image[:, top:top + self.crop, left:left + self.crop]
        if self.augment:
            image = dihedral(image, int(self._rng().integers(8)))
        return {"image": image.contiguous(), "tile_id": tile_id, "case_id": str(self.case_ids[i])}
