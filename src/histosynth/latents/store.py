"""The latent cache `WS/latents/<vae-id>/`: VAE latents of every tile, computed once per tile key.

    info.json             vae (path or hub id), vae_id, kind, scaling_factor, shape [C, h, w],
                          count, dihedral ("latent-space") and its measured error
    tiles.parquet         tile_id, tile_key, case_id, split, shard, row (the current tile index)
    shard-<k>.safetensors `latents` float32 [n, C, h, w] (raw, i.e. NOT multiplied by
                          scaling_factor), and with vae.cache_dihedral `variants` float32
                          [n, 7, C, h, w] (encodings of dihedral(tile, k), k = 1..7); the metadata
                          `tile_keys` lists the rows' tile keys (histosynth.slides.keys)
    status.json           status record (histosynth.status): one unit per shard
    manifest.json

`WS/latents/result.json` (LatentsResult) names the cache the last `encode` made current; `train`
reads it, so `encode --set vae.pretrained=X` followed by `train` trains on X's latents.

Rows are found by tile key, never by tile_id or position: tile ids are renumbered when a slide is
added, and a cache whose keys do not cover the current index is stale (train re-encodes the rest).
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
from ..results import StageResult

INFO_NAME = "info.json"
TILES_NAME = "tiles.parquet"
KEYS_METADATA = "tile_keys"


def shard_name(k: int) -> str:
    return f"shard-{k}.safetensors"


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


class LatentsResult(StageResult):
    """What `encode` leaves for `train` (`WS/latents/result.json`): which VAE, which cache folder, for
    which tiles. A file of 0.1 (no `kind`, a `complete` flag) loads as it is."""

    kind: str = "latents"
    vae: str            # the VAE source (folder or hub id) the latents were encoded with
    vae_id: str         # its content identity (latents.store.vae_id) when encoded
    path: str           # the cache folder, relative to the workspace
    count: int          # tiles in the cache's tiles.parquet
    keys: str           # slides.keys.keys_hash of those tiles

    @classmethod
    def read(cls, ws) -> "LatentsResult | None":
        """The workspace's current latents, or None before the first `encode`."""
        return cls.load(ws.latents_result_path.parent) if ws.latents_result_path.exists() else None

    def write(self, ws) -> None:
        self.save(ws.latents_result_path.parent)

    def folder(self, ws) -> Path:
        return ws.root / self.path


class LatentStore:
    def __init__(self, path: str | Path):
        import pandas as pd
        from safetensors.torch import load_file

        self.path = Path(path)
        if not (self.path / TILES_NAME).exists():
            raise HistosynthError(f"{self.path}: incomplete latent cache; run `histosynth encode` again")
        self.info = json.loads((self.path / INFO_NAME).read_text())
        self.index = pd.read_parquet(self.path / TILES_NAME)
        if "tile_key" not in self.index.columns:
            raise HistosynthError(f"{self.path}: latent cache of an older histosynth (no tile keys); "
                                  f"run `histosynth encode` again")
        shards = {int(k): load_file(self.path / shard_name(int(k))) for k in sorted(self.index["shard"].unique())}
        shard_col, row_col = self.index["shard"].to_numpy(), self.index["row"].to_numpy()
        self.latents = self._gather(shards, "latents", shard_col, row_col)  # [N, C, h, w], tiles.parquet order
        # [N, 7, C, h, w] when every shard has the encoded dihedral variants, else None
        has_variants = all("variants" in s for s in shards.values())
        self.variants = self._gather(shards, "variants", shard_col, row_col) if has_variants and shards else None
        self._row = {key: i for i, key in enumerate(self.index["tile_key"])}

    @staticmethod
    def _gather(shards: dict, name: str, shard_col, row_col) -> torch.Tensor:
        first = next(iter(shards.values()))[name]
        out = torch.empty((len(shard_col), *first.shape[1:]), dtype=first.dtype)
        for k, tensors in shards.items():
            where = np.flatnonzero(shard_col == k)
            out[torch.from_numpy(where)] = tensors[name][torch.from_numpy(row_col[where].astype(np.int64))]
        return out

    @property
    def scaling_factor(self) -> float:
        return float(self.info["scaling_factor"])

    def keys(self, split: str | None = None) -> list[str]:
        index = self.index if split is None else self.index[self.index["split"] == split]
        return index["tile_key"].astype(str).tolist()

    def missing(self, keys) -> list[str]:
        """The keys that have no latents here (a stale cache when not empty)."""
        return [k for k in keys if k not in self._row]

    def rows(self, keys) -> np.ndarray:
        try:
            return np.fromiter((self._row[k] for k in keys), dtype=np.int64)
        except KeyError as exc:
            raise HistosynthError(f"{self.path}: tile {exc.args[0]} has no cached latents; run `histosynth encode`") from None

    def for_keys(self, keys) -> torch.Tensor:
        """Raw latents [N, C, h, w] of these tiles (multiply by scaling_factor for diffusion)."""
        return self.latents[self.rows(keys)]

    def all_variants(self, keys) -> torch.Tensor | None:
        """Raw latents of all 8 dihedral variants [N, 8, C, h, w] (k = 0..7), if they were cached."""
        if self.variants is None:
            return None
        rows = self.rows(keys)
        return torch.cat([self.latents[rows].unsqueeze(1), self.variants[rows]], dim=1)

    @classmethod
    def current(cls, ws) -> "LatentStore":
        """The cache the last `encode` made current (WS/latents/result.json)."""
        result = LatentsResult.read(ws)
        if result is None:
            raise HistosynthError(f"{ws.latents_result_path}: not found; run `histosynth encode` first")
        return cls(result.folder(ws))
