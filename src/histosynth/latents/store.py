"""The latent cache `WS/latents/<vae-id>/`: VAE latents of every tile, computed once.

    info.json             vae (path or hub id), vae_id, kind, scaling_factor, shape [C, h, w],
                          count, dihedral ("latent-space") and its measured error
    tiles.parquet         tile_id, case_id, split, shard, row
    shard-<k>.safetensors `latents` float32 [n, C, h, w] (raw, i.e. NOT multiplied by
                          scaling_factor), `tile_id` int64 [n], and with vae.cache_dihedral
                          `variants` float32 [n, 7, C, h, w] (encodings of dihedral(tile, k), k = 1..7)
    manifest.json

Latents are the KL posterior mean (VQ: pre-quantisation encoder output). Without cached variants
the 8 dihedral transforms are applied to the latents at training time (approximate; see encode.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..console import HistosynthError
from ..fileio import hash_input


def vae_id(vae_source: str | Path) -> str:
    """A stable folder name for a VAE: its folder's content hash (hub ids: the id itself)."""
    import hashlib

    path = Path(vae_source)
    if path.exists():
        path = path if (path / "config.json").exists() else path / "vae"
        h = hashlib.sha256()
        for f in sorted([path / "config.json", *path.glob("*.safetensors")]):  # not manifest.json
            h.update(hash_input(f).encode())
        return "vae-" + h.hexdigest()[:12]
    return str(vae_source).replace("/", "--")


def model_id(vae) -> str:
    """Folder name for a VAE given as a model object: hash of its weights."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return "vae-" + h.hexdigest()[:12]


class LatentStore:
    def __init__(self, path: str | Path):
        import pandas as pd
        from safetensors.torch import load_file

        self.path = Path(path)
        if not (self.path / "tiles.parquet").exists():
            raise HistosynthError(f"{self.path}: incomplete latent cache; run `histosynth encode` again")
        self.info = json.loads((self.path / "info.json").read_text())
        self.index = pd.read_parquet(self.path / "tiles.parquet")
        shards = [load_file(self.path / f"shard-{k}.safetensors") for k in sorted(self.index["shard"].unique())]
        self.latents = torch.cat([s["latents"] for s in shards])  # [N, C, h, w], rows in index order
        # [N, 7, C, h, w] when every shard has the encoded dihedral variants, else None
        self.variants = torch.cat([s["variants"] for s in shards]) if all("variants" in s for s in shards) else None
        self._row = {int(t): i for i, t in enumerate(self.index["tile_id"])}

    @property
    def scaling_factor(self) -> float:
        return float(self.info["scaling_factor"])

    def tile_ids(self, split: str | None = None) -> list[int]:
        index = self.index if split is None else self.index[self.index["split"] == split]
        return index["tile_id"].astype(int).tolist()

    def rows(self, tile_ids) -> np.ndarray:
        return np.fromiter((self._row[int(t)] for t in tile_ids), dtype=np.int64)

    def for_tiles(self, tile_ids) -> torch.Tensor:
        """Raw latents [N, C, h, w] of these tiles (multiply by scaling_factor for diffusion)."""
        return self.latents[self.rows(tile_ids)]

    def all_variants(self, tile_ids) -> torch.Tensor | None:
        """Raw latents of all 8 dihedral variants [N, 8, C, h, w] (k = 0..7), if they were cached."""
        if self.variants is None:
            return None
        rows = self.rows(tile_ids)
        return torch.cat([self.latents[rows].unsqueeze(1), self.variants[rows]], dim=1)

    @classmethod
    def locate(cls, ws, vae_source: str | Path) -> "LatentStore":
        path = ws.latent_dir(vae_id(vae_source))
        ws.require(path / "tiles.parquet", "encode")
        return cls(path)
