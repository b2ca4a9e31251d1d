"""A tile's stable key: what every join between tiles, latents and embeddings goes by.

`tile_id` is only a row number of the current tile index: adding a slide that sorts before the
others renumbers every later tile, so a cache keyed by tile_id silently pairs a tile's latents with
another tile's caption. The key names the pixels themselves: slide, level-0 coordinates, tile size
and scale (`slide_id:x:y:size:mpp`), so it survives renumbering and changes when a slide is re-tiled
at another size or scale. A tile dataset is one "slide" of many source images whose coordinates
each start at 0, so its rows name their source image too (`dataset/source:x:y:size:mpp`); without
it every image's first tile had the same key, and a join by key paired tiles with other tiles'
captions (embed) or stopped encode with "duplicate tiles".
"""

from __future__ import annotations

import hashlib

KEY_COLUMN = "tile_key"


def tile_key(slide_id: str, x: int, y: int, size: int, mpp: float, source: str | None = None) -> str:
    """source: the tile's source image when it is not the slide itself (tile datasets)."""
    where = slide_id if source in (None, "", slide_id) else f"{slide_id}/{source}"
    return f"{where}:{int(x)}:{int(y)}:{int(size)}:{float(mpp):.6g}"


def index_keys(index) -> list[str]:
    """The key of every row of a tile index (its `tile_key` column when it has one)."""
    if KEY_COLUMN in index.columns:
        return index[KEY_COLUMN].astype(str).tolist()
    mpp = index["mpp"] if "mpp" in index.columns else [float("nan")] * len(index)
    source = index["source"] if "source" in index.columns else [None] * len(index)
    return [tile_key(*row) for row in zip(index["slide_id"], index["x"], index["y"], index["size"], mpp, source)]


def keys_hash(keys) -> str:
    """Identity of a set of tiles (order-independent)."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
