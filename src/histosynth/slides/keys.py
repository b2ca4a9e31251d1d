"""A tile's stable key: what every join between tiles, latents and embeddings goes by.

`tile_id` is only a row number of the current tile index: adding a slide that sorts before the
others renumbers every later tile, so a cache keyed by tile_id silently pairs a tile's latents with
another tile's caption. The key names the pixels themselves: slide, level-0 coordinates, tile size
and scale (`slide_id:x:y:size:mpp`), so it survives renumbering and changes when a slide is re-tiled
at another size or scale.
"""

from __future__ import annotations

import hashlib

KEY_COLUMN = "tile_key"


def tile_key(slide_id: str, x: int, y: int, size: int, mpp: float) -> str:
    return f"{slide_id}:{int(x)}:{int(y)}:{int(size)}:{float(mpp):.6g}"


def index_keys(index) -> list[str]:
    """The key of every row of a tile index (its `tile_key` column when it has one)."""
    if KEY_COLUMN in index.columns:
        return index[KEY_COLUMN].astype(str).tolist()
    mpp = index["mpp"] if "mpp" in index.columns else [float("nan")] * len(index)
    return [tile_key(*row) for row in zip(index["slide_id"], index["x"], index["y"], index["size"], mpp)]


def keys_hash(keys) -> str:
    """Identity of a set of tiles (order-independent)."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
