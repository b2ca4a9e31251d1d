"""Reading the other stages' outputs: tiles (slides stage) and text embeddings (text stage).

Each reader prefers the owning stage's own module and falls back to the on-disk contract in
docs/architecture.md, so the latents and train stages work on any workspace in that format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..console import HistosynthError


def read_tile_index(ws):
    """The tile index (tile_id, case_id, split, file, row, ...) as a DataFrame."""
    try:
        from ..slides.index import read_index
    except ImportError:
        import pandas as pd

        ws.require(ws.tile_index_path, "tile")
        return pd.read_parquet(ws.tile_index_path)
    return read_index(ws)


class _H5Tiles:
    """Contract reader: `imgs` rows of the per-slide HDF5 files named by the index."""

    def __init__(self, ws):
        self.ws = ws
        index = read_tile_index(ws)
        self.where = dict(zip(index["tile_id"].tolist(), zip(index["file"], index["row"].astype(int))))

    def get(self, tile_ids) -> np.ndarray:
        import h5py

        out, handles = [], {}
        try:
            for tid in tile_ids:
                file, row = self.where[int(tid)]
                if file not in handles:
                    handles[file] = h5py.File(self.ws.root / file, "r")
                out.append(handles[file]["imgs"][row])
        finally:
            for h in handles.values():
                h.close()
        return np.stack(out)


def tile_store(ws):
    """An object with `.get(tile_ids) -> uint8 [N, H, W, 3]`."""
    try:
        from ..slides.store import TileStore
    except ImportError:
        return _H5Tiles(ws)
    return TileStore(ws)


class _EmbeddingFiles:
    """Contract reader for `embeddings/budget-<N>-<encoder>-L<ctx>/` (see docs/architecture.md)."""

    def __init__(self, path: str | Path):
        import pandas as pd
        import torch
        from safetensors.torch import load_file

        self.path = Path(path)
        self.info = json.loads((self.path / "info.json").read_text())
        texts = pd.read_parquet(self.path / "texts.parquet")
        tiles = pd.read_parquet(self.path / "tiles.parquet")
        shards = {s: load_file(self.path / f"shard-{s}.safetensors") for s in sorted(texts["shard"].unique())}
        # All texts in memory once: a case's text is shared by all its tiles, so this is small.
        self.hidden = torch.cat([shards[s]["hidden"] for s in sorted(shards)])
        self.mask = torch.cat([shards[s]["mask"] for s in sorted(shards)])
        offsets = np.cumsum([0] + [len(shards[s]["hidden"]) for s in sorted(shards)])
        shard_pos = {s: offsets[i] for i, s in enumerate(sorted(shards))}
        text_row = {h: shard_pos[s] + r for h, s, r in zip(texts["text_hash"], texts["shard"], texts["row"])}
        self.tile_row = {int(t): text_row[h] for t, h in zip(tiles["tile_id"], tiles["text_hash"])}
        self.tiles = tiles
        self._uncond = load_file(self.path / "uncond.safetensors")

    width = property(lambda self: int(self.info["width"]))
    context_length = property(lambda self: int(self.info["context_length"]))
    attend_padding = property(lambda self: bool(self.info.get("attend_padding", False)))

    def for_tiles(self, tile_ids):
        rows = [self.tile_row[int(t)] for t in tile_ids]
        return self.hidden[rows], self.mask[rows]

    def uncond(self):
        return self._uncond["hidden"].reshape(1, self.context_length, self.width), \
            self._uncond["mask"].reshape(1, self.context_length)


def embedding_set(ws, cfg, budget: int):
    """The EmbeddingSet of this budget and text config (text stage's class when present)."""
    try:
        from ..text.store import EmbeddingSet
    except ImportError:
        matches = sorted(ws.embeddings_dir.glob(f"budget-{budget}-*"))
        if not matches:
            raise HistosynthError(f"{ws.embeddings_dir}: no embeddings for budget {budget}; run `histosynth embed` first")
        return _EmbeddingFiles(matches[-1])
    found = EmbeddingSet.locate(ws, cfg, budget)
    return found if isinstance(found, EmbeddingSet) else EmbeddingSet(found)


def embedding_info(emb) -> dict:
    """info.json of an EmbeddingSet (what the run copies into text_encoder.json)."""
    path = Path(getattr(emb, "path", ""))
    if (path / "info.json").exists():
        return json.loads((path / "info.json").read_text())
    return dict(getattr(emb, "info", {}))
