"""The workspace's tile index (`tiles/index.parquet`), rebuilt from the finished slide files.

The index is derived, never edited: every run (and `tile-merge`) rebuilds it from all complete
`tiles/slides/*.h5` in slide-id order, so `tile_id` is the same for the same set of slides however
they were tiled (resumed, sharded, merged). Columns: docs/architecture.md, "Tile index".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..config import HistoSynthConfig
from ..console import HistosynthError, info, warn
from ..fileio import atomic_path, write_json
from ..workspace import Workspace
from .descriptors import DESCRIPTORS, column

COLUMNS = ("tile_id", "slide_id", "case_id", "sample_type", "slide_type", "x", "y", "mpp", "size",
           "tissue", "file", "row", "split", "mpp_source", "source", "label", "caption")
DESC_COLUMNS = [column(name) for name in DESCRIPTORS]   # desc_<name>, docs/architecture.md


def finished_slides(ws: Workspace) -> list[Path]:
    return sorted(p for p in ws.slides_dir.glob("*.h5") if not p.name.startswith("."))


def slide_frame(ws: Workspace, path: Path):
    import h5py
    import pandas as pd

    with h5py.File(path, "r") as f:
        coords, attrs = f["coords"][:], dict(f["coords"].attrs)
        tissue = f["tissue"][:]
        per_tile = {key: f[f"tile_{key}"].asstr()[:] for key in ("source", "label", "caption", "case_id")
                    if f"tile_{key}" in f}    # tile datasets (images.py)
        group = f.get("descriptors")
        desc = {column(name): (group[name][:] if group is not None and name in group else np.nan)
                for name in DESCRIPTORS}
    n = len(coords)
    frame = pd.DataFrame({
        "slide_id": path.stem,
        "case_id": str(attrs["case_id"]),
        "sample_type": str(attrs["sample_type"]) or None,
        "slide_type": str(attrs["slide_type"]) or None,
        "x": coords[:, 0].astype(np.int64),
        "y": coords[:, 1].astype(np.int64),
        "mpp": float(attrs["mpp"]),
        "size": int(attrs["patch_size"]),
        "tissue": tissue.astype(np.float32),
        "file": str(path.relative_to(ws.root)),
        "row": np.arange(n, dtype=np.int64),
        "mpp_source": str(attrs.get("mpp_source", "")),
        "source": per_tile.get("source", path.stem),
        "label": per_tile.get("label", ""),
        "caption": per_tile.get("caption", ""),
        **desc,
    })
    if "case_id" in per_tile:
        frame["case_id"] = per_tile["case_id"]
    scores = ws.scores_dir / f"{path.stem}.parquet"
    if scores.exists():
        frame = frame.merge(pd.read_parquet(scores), on="row", how="left")
    return frame


def build_index(ws: Workspace, cfg: HistoSynthConfig):
    import pandas as pd

    files = finished_slides(ws)
    if not files:
        raise HistosynthError(f"{ws.slides_dir}: no tiled slides; run `histosynth tile` first")
    index = pd.concat([slide_frame(ws, p) for p in files], ignore_index=True)
    index.insert(0, "tile_id", np.arange(len(index), dtype=np.int64))
    if index[["mpp", "size"]].drop_duplicates().shape[0] > 1:
        warn(f"{ws.tile_index_path}: slides were tiled with different mpp/size: "
             f"{sorted(set(zip(index['mpp'], index['size'])))}")
    split = ws.assign_split(index["case_id"].unique(), cfg.split.test_fraction, cfg.split.seed)
    index["split"] = index["case_id"].map(split)
    prob_cols = sorted(c for c in index.columns if c.startswith("prob_"))
    index = index[list(COLUMNS) + prob_cols + DESC_COLUMNS]
    return add_levels(ws, index)


def add_levels(ws: Workspace, index):
    """`level_<field>` columns: each descriptor binned into words (descriptors.LEVELS) by quantile
    edges fitted on the training tiles, recorded in tiles/descriptor_edges.json so that every
    stage (embed, sample, evaluate) bins the same way. Without descriptors: no level columns."""
    from .descriptors import LEVELS, TEMPLATE_FIELDS, bin_words, column, fit_edges

    described = index[DESC_COLUMNS].notna().any(axis=1)
    if described.any() and not described.all():
        warn(f"{ws.tile_index_path}: {int((~described).sum())} tiles have no descriptors "
             "(tiled before they existed); run `histosynth describe -w WS`")
    train = index[described & (index["split"] == "train")]
    if train.empty:
        return index
    names = [n for n in TEMPLATE_FIELDS.values() if train[column(n)].notna().any()]
    edges = fit_edges(train, names)
    write_json(ws.descriptor_edges_path, {"levels": list(LEVELS), "fitted_on": "train split",
                                          "n_tiles": int(len(train)), "edges": edges})
    words = bin_words(index, edges, LEVELS)
    for field, name in TEMPLATE_FIELDS.items():
        if name in edges:
            index[f"level_{field}"] = [w[name] if ok else None for w, ok in zip(words, described)]
    return index


def write_index(ws: Workspace, cfg: HistoSynthConfig):
    index = build_index(ws, cfg)
    with atomic_path(ws.tile_index_path) as tmp:
        index.to_parquet(tmp, index=False)
    return index


def read_index(ws: Workspace | str | Path):
    """The tile index as a DataFrame (one row per tile)."""
    import pandas as pd

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if not ws.tile_index_path.exists():
        raise HistosynthError(f"{ws.tile_index_path}: no tile index; run histosynth tile first")
    return pd.read_parquet(ws.tile_index_path)


def merge_workspaces(ws: Workspace, cfg: HistoSynthConfig, parts: list[Path]) -> dict:
    """Copy the finished slides of other workspaces (e.g. one per cluster job) into `ws`, then
    rebuild its index; with no parts, just rebuild (jobs that shared one workspace with --shard)."""
    copied, present = 0, 0
    for part in map(Workspace, parts):
        if part.root.resolve() == ws.root.resolve():
            continue
        if not part.slides_dir.is_dir():
            raise HistosynthError(f"{part.slides_dir}: not a tiled workspace")
        for h5 in finished_slides(part):
            target = ws.slides_dir / h5.name
            if target.exists():
                present += 1
                continue
            for src, dst_dir in ((part.scores_dir / f"{h5.stem}.parquet", ws.scores_dir),
                                 (part.thumbnails_dir / f"{h5.stem}.png", ws.thumbnails_dir), (h5, ws.slides_dir)):
                if src.exists():  # the .h5 last: once it is there, its companions are too
                    with atomic_path(dst_dir / src.name) as tmp:
                        shutil.copyfile(src, tmp)
            copied += 1
    index = write_index(ws, cfg)
    info(f"{ws.tile_index_path}: {len(index)} tiles from {index['slide_id'].nunique()} slides "
         f"({copied} slides copied, {present} already present)")
    return {"copied_slides": copied, "already_present": present, "total_tiles": len(index),
            "slides": int(index["slide_id"].nunique())}
