"""Per-tile class probabilities from wsinfer's per-slide CSVs, joined onto the tiles by position.

wsinfer writes `<slide stem>.csv` with `minx, miny, width, height` (level-0 px) and `prob_<class>`
columns, on its own patch grid. A tile takes the mean of the patches it overlaps, weighted by the
overlapping area (PathLDM averaged the overlapping predictions); a tile no patch touches gets NaN.
Joined scores are kept as `tiles/scores/<slide_id>.parquet` (`row`, `prob_*`), so a rerun without
`--scores` still finds them when the index is rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..console import HistosynthError, warn
from ..workspace import Workspace
from .reader import SlideMeta

POSITION = ("minx", "miny", "width", "height")


def read_wsinfer_csv(path: Path):
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise HistosynthError(f"{path}: cannot read scores CSV ({exc})") from None
    missing = [c for c in POSITION if c not in table.columns]
    probs = [c for c in table.columns if c.startswith("prob_")]
    if missing or not probs:
        raise HistosynthError(f"{path}: expected wsinfer columns minx, miny, width, height, prob_<class>; "
                              f"missing {missing or 'prob_* columns'}")
    return table


def average_overlaps(tile_boxes: np.ndarray, patch_boxes: np.ndarray, probs: np.ndarray,
                     block: int = 256) -> np.ndarray:
    """Area-weighted mean of `probs` [M, C] over patches overlapping each tile; boxes are x0,y0,x1,y1."""
    out = np.full((len(tile_boxes), probs.shape[1]), np.nan, dtype=np.float32)
    for start in range(0, len(tile_boxes), block):  # blocks bound the [tiles, patches] overlap matrix
        t = tile_boxes[start:start + block, None, :]
        w = np.clip(np.minimum(t[..., 2], patch_boxes[:, 2]) - np.maximum(t[..., 0], patch_boxes[:, 0]), 0, None)
        h = np.clip(np.minimum(t[..., 3], patch_boxes[:, 3]) - np.maximum(t[..., 1], patch_boxes[:, 1]), 0, None)
        area = w * h
        total = area.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + block] = (area @ probs) / total
    return out


def join_slide_scores(h5_path: Path, csv_path: Path):
    """DataFrame (`row`, `prob_*`) for the tiles of one slide's HDF5."""
    import h5py
    import pandas as pd

    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][:].astype(np.float64)
        extent0 = float(f["coords"].attrs["size_level0"])
    table = read_wsinfer_csv(csv_path)
    prob_cols = [c for c in table.columns if c.startswith("prob_")]
    pos = table[list(POSITION)].to_numpy(np.float64)
    patch_boxes = np.concatenate([pos[:, :2], pos[:, :2] + pos[:, 2:]], axis=1)
    tile_boxes = np.concatenate([coords, coords + extent0], axis=1)
    probs = average_overlaps(tile_boxes, patch_boxes, table[prob_cols].to_numpy(np.float64))
    frame = pd.DataFrame(probs, columns=prob_cols)
    frame.insert(0, "row", np.arange(len(coords), dtype=np.int64))
    return frame


def join_scores(ws: Workspace, metas: list[SlideMeta], source: Path) -> int:
    """Join `source/<slide_id>.csv` onto every tiled slide; returns how many slides got scores."""
    from ..fileio import atomic_path

    source = Path(source)
    if not source.is_dir():
        raise HistosynthError(f"{source}: --scores must be a folder of wsinfer per-slide CSVs")
    joined = 0
    for meta in metas:
        h5_path = ws.slides_dir / f"{meta.slide_id}.h5"
        csv_path = source / f"{meta.slide_id}.csv"
        if not h5_path.exists():
            continue
        if not csv_path.exists():
            warn(f"{meta.slide_id}: no scores CSV {csv_path.name} in {source}")
            continue
        frame = join_slide_scores(h5_path, csv_path)
        with atomic_path(ws.scores_dir / f"{meta.slide_id}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        joined += 1
    return joined
