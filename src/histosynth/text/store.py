"""The embedding cache on disk and its reader.

    WS/embeddings/budget-<N>-<encoder-slug>-L<ctx>/
      info.json              encoder, width, context_length, long_context, attend_padding, template, levels, ...
      texts.parquet          text_hash, text, n_tokens, shard, row
      tiles.parquet          tile_id, tile_key, case_id, split, text_hash (joined by tile_key)
      shard-<k>.safetensors  hidden [n, L, D], mask [n, L], pooled [n, D]; metadata lists the rows' hashes
      uncond.safetensors     the empty text (classifier-free guidance), same tensors with n = 1

Each unique condition text is stored once; tiles point at their text by hash. Shards are opened
with `safe_open` (memory-mapped) and read row by row, so training never loads the whole set.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from ..console import HistosynthError
from ..fileio import read_json

INFO_NAME = "info.json"
TEXTS_NAME = "texts.parquet"
TILES_NAME = "tiles.parquet"
UNCOND_NAME = "uncond.safetensors"
SET_UNIT = "embeddings"      # status unit of the whole set (tables + info.json); shards are units too


def shard_name(k: int) -> str:
    return f"shard-{k}.safetensors"


def encoder_slug(name: str) -> str:
    """Folder-safe encoder id: 'vinid/plip' -> 'vinid-plip'; local folders get a hash of their path."""
    if Path(name).is_dir() or name.startswith("local-dir:"):
        path = Path(name.removeprefix("local-dir:")).resolve()
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        return f"{_slug(path.name)}-{digest}"
    return _slug(name.removeprefix("hf-hub:"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "encoder"


def embeddings_dir(ws, budget: int, encoder: str, context_length: int) -> Path:
    return ws.embedding_dir(budget, encoder_slug(encoder), context_length)


def embedding_inputs(ws, budget: int) -> str:
    """Identity of what a budget's embeddings are made from: the tile index and the summaries."""
    from ..fileio import hash_input
    from ..status import inputs_hash

    index, summaries = ws.tile_index_path, ws.summaries_path(budget)
    return inputs_hash(index=hash_input(index) if index.exists() else None,
                       summaries=hash_input(summaries) if summaries.exists() else None)


def finished(path: Path, info: dict) -> bool:
    """The status record's `embeddings` unit is done (histosynth.status); embeddings of an older
    histosynth, which have no record, say so in info.json (`complete`)."""
    from ..status import STATUS_FILE, WorkLog

    record = WorkLog(path / STATUS_FILE).get(SET_UNIT)
    return record.state == "done" if record is not None else bool(info.get("complete", False))


class EmbeddingSet:
    """Read side of an embeddings folder: lookups by text hash or tile id, memory-mapped shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        info_path = self.path / INFO_NAME
        if not info_path.exists():
            raise HistosynthError(f"{info_path}: not found; run `histosynth embed` first")
        self.info: dict = read_json(info_path)
        if not finished(self.path, self.info):
            raise HistosynthError(f"{self.path}: unfinished embeddings; rerun `histosynth embed` to complete them")
        self._texts = None
        self._tiles = None
        self._where: dict[str, tuple[int, int]] | None = None
        self._key_hash: dict[str, str] | None = None
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    # ---- description ------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.info["width"])

    @property
    def context_length(self) -> int:
        return int(self.info["context_length"])

    @property
    def attend_padding(self) -> bool:
        return bool(self.info["attend_padding"])

    @property
    def texts(self):
        if self._texts is None:
            import pandas as pd

            self._texts = pd.read_parquet(self.path / TEXTS_NAME)
        return self._texts

    @property
    def tiles(self):
        if self._tiles is None:
            import pandas as pd

            self._tiles = pd.read_parquet(self.path / TILES_NAME)
        return self._tiles

    def tile_hashes(self, split: str | None = None):
        """tiles.parquet (tile_id, case_id, split, text_hash), optionally one split only."""
        tiles = self.tiles
        return tiles if split is None else tiles[tiles["split"] == split].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.texts)

    # ---- lookups ----------------------------------------------------------------------------
    def lookup(self, text_hashes) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [n, L, D] float32, mask [n, L] long) for the given text hashes, in order."""
        if self._where is None:
            t = self.texts
            self._where = dict(zip(t["text_hash"], zip(t["shard"].astype(int), t["row"].astype(int))))
        hidden, mask = [], []
        for h in text_hashes:
            if h not in self._where:
                raise HistosynthError(f"{self.path}: text hash {h} is not in {TEXTS_NAME}")
            shard, row = self._where[h]
            f = self._shard(shard)
            hidden.append(f.get_slice("hidden")[row : row + 1])
            mask.append(f.get_slice("mask")[row : row + 1])
        return torch.cat(hidden).float(), torch.cat(mask).long()

    def is_current(self, ws, budget: int) -> bool:
        """Made from the workspace's current tile index and summaries (see embedding_inputs)."""
        return "tile_key" in self.tiles.columns and self.info.get("inputs") == embedding_inputs(ws, budget)

    def missing(self, keys) -> list[str]:
        """The tile keys that have no condition text here."""
        self._keys()
        return [k for k in keys if k not in self._key_hash]

    def _keys(self) -> dict[str, str]:
        if self._key_hash is None:
            if "tile_key" not in self.tiles.columns:
                raise HistosynthError(f"{self.path}: embeddings of an older histosynth (no tile keys); "
                                      f"run `histosynth embed` again")
            self._key_hash = dict(zip(self.tiles["tile_key"].astype(str), self.tiles["text_hash"]))
        return self._key_hash

    def for_keys(self, keys) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, mask) of each tile's condition text, in the order of `keys` (tile keys)."""
        where = self._keys()
        try:
            hashes = [where[k] for k in keys]
        except KeyError as exc:
            raise HistosynthError(f"{self.path}: tile {exc.args[0]} is not in {TILES_NAME}; run `histosynth embed`") from None
        return self.lookup(hashes)

    def uncond(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [1, L, D], mask [1, L]) of the empty text, for classifier-free guidance."""
        from safetensors.torch import load_file

        tensors = load_file(self.path / UNCOND_NAME)
        return tensors["hidden"].float(), tensors["mask"].long()

    def __getstate__(self) -> dict:
        """Picklable for DataLoader workers: open shard handles stay behind and are reopened there."""
        return {**self.__dict__, "_handles": {}}

    def _shard(self, k: int):
        from safetensors import safe_open

        if self._pid != os.getpid():  # a DataLoader worker: reopen rather than share handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = safe_open(self.path / shard_name(k), framework="pt")
        return self._handles[k]

    # ---- where a workspace keeps it ---------------------------------------------------------
    @staticmethod
    def locate(ws, cfg, budget: int, encoder: str | None = None) -> Path:
        """The folder `histosynth embed [--encoder ENCODER]` writes for this config and budget.

        With a computed context length, an existing folder for (budget, encoder) is found without
        loading the encoder; otherwise the encoder's tokenizer computes the length.
        """
        encoder = str(encoder or cfg.text.encoder)
        if cfg.text.context_length is not None:
            return embeddings_dir(ws, budget, encoder, cfg.text.context_length)
        stem = embeddings_dir(ws, budget, encoder, 0).name.removesuffix("-L0")
        found = sorted(p for p in ws.embeddings_dir.glob(f"{stem}-L*") if re.fullmatch(rf"{re.escape(stem)}-L\d+", p.name))
        if len(found) == 1 and _same_text_settings(found[0], cfg.text):
            return found[0]
        from .condition import context_length_for
        from .encoders import load_encoder

        enc = load_encoder(encoder)
        return embeddings_dir(ws, budget, encoder, context_length_for(enc, cfg.text.template, budget, cfg.text.levels))


def _same_text_settings(path: Path, text_cfg) -> bool:
    info_path = path / INFO_NAME
    if not info_path.exists():
        return False
    info = read_json(info_path)
    return (info.get("template"), info.get("levels"), info.get("long_context")) == (
        text_cfg.template, list(text_cfg.levels), text_cfg.long_context)
