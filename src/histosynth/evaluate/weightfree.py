"""The weight-free metrics of `evaluate`, each beside its real-vs-real reference and the memorization share.

What each generated image asked for comes from the sample folder's `metadata.jsonl`, per record:
`label` (tissue class), `bins` ({descriptor or template field: low|medium|high}) or top-level
template fields (`nuclei: high`), else `tile_id`: the real tile whose condition text made the
prompt (`sample --from-summaries`); its class is the index's `label` and its bins are its own
descriptors, measured here like the generated images' and binned with the same edges.
The reference (real vs real) puts real training-split tiles where the generated images were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .c2st import c2st
from .fidelity import LEVELS, class_fidelity, descriptor_distances, descriptor_fidelity, requested_bins
from .sources import Source, center_crop

WEIGHT_FREE = ("fidelity", "descriptors", "c2st", "classes")
IMPLEMENTATIONS = {
    "fidelity": "histosynth.slides.descriptors.describe on each generated image vs its requested bin: Spearman "
                "(measured value vs level) and bin accuracy, 95% bootstrap CIs; shuffled-request control; "
                "reference: real test tiles requesting their own bins (the attainable maximum)",
    "descriptors": "per-descriptor 1-D Wasserstein distance (scipy), real test vs generated; "
                   "reference: real test vs real training tiles",
    "c2st": "small CNN from scratch (fixed seeded recipe), 5-fold CV on matched pairs, AUROC with 95% bootstrap CI; "
            "reference: real test vs real training tiles",
    "classes": "CNN trained on labelled real training tiles; balanced accuracy of generated images vs requested "
               "class (CI, confusion matrix), shuffled control, train-on-synthetic/test-on-real",
}


def descriptors_available() -> str | None:
    """None when histosynth.slides.descriptors can be imported, else why not."""
    try:
        from ..slides import descriptors  # noqa: F401
    except ImportError as exc:
        return f"histosynth.slides.descriptors is not available ({exc})"
    return None


def read_requests(fake_src: Source, ids) -> list[dict]:
    """One metadata.jsonl record per generated image ({} where the folder has none)."""
    path = Path(fake_src.path) / "metadata.jsonl"
    if fake_src.kind != "folder" or not path.exists():
        return [{} for _ in ids]
    by_file = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_file[record.get("file")] = record
    return [by_file.get(str(i), {}) for i in ids]


def _frame(stats: dict):
    import pandas as pd

    return pd.DataFrame(stats["descriptors"], columns=[str(c) for c in stats["descriptor_names"]])


def requested_labels(records: list[dict], ws_root: Path | None) -> list[str | None]:
    """The class each generated image asked for: `label`, else its source tile's index `label`."""
    labels = [None if r.get("label") is None else str(r["label"]) for r in records]
    need = [i for i, r in enumerate(records) if labels[i] is None and r.get("tile_id") is not None]
    if need and ws_root is not None:
        from ..slides.index import read_index

        index = read_index(ws_root).set_index("tile_id")
        if "label" in index.columns:
            for i in need:
                labels[i] = str(index.at[int(records[i]["tile_id"]), "label"])
    return labels


def requested_descriptor_bins(records: list[dict], ws_root: Path | None, edges: dict, mpp: float,
                              crop: int | None) -> list[dict]:
    """The bins each generated image asked for: recorded ones, else its source tile's own (measured here)."""
    bins = [requested_bins(r) for r in records]
    need = [i for i, r in enumerate(records) if not bins[i] and r.get("tile_id") is not None]
    if need and ws_root is not None:
        from ..slides.descriptors import bin_words, describe
        from ..slides.store import TileStore
        from ..workspace import Workspace

        tiles = TileStore(Workspace(ws_root)).get([int(records[i]["tile_id"]) for i in need])
        tiles = np.stack([center_crop(img, crop) if crop else img for img in tiles])
        for i, words in zip(need, bin_words(describe(tiles, mpp), edges, levels=LEVELS)):
            bins[i] = {k: v for k, v in words.items() if k in edges}
    return bins


def weight_free(active: set[str], real: dict, fake: dict, train: dict | None, records: list[dict],
                ws_root: Path | None, mpp: float | None, crop: int | None, skipped: dict,
                near_copy_share: float | None, seed: int = 0) -> dict:
    """The metrics of `active` that the statistics allow; the others go to `skipped` with the reason."""
    out: dict = {}
    memo = {"memorization_near_copy_share": near_copy_share}
    if "c2st" in active:
        _guard(out, skipped, "c2st", lambda: {
            "generated": c2st(real["small"], fake["small"], seed=seed),
            "real_reference": c2st(real["small"], train["small"], seed=seed) if train is not None else None,
            **memo})
    if {"fidelity", "descriptors"} & active:
        why = descriptors_available() or (None if mpp else "needs the images' microns per pixel: pass --mpp")
        if why:
            skipped.update({m: why for m in {"fidelity", "descriptors"} & active})
        else:
            real_df, fake_df = _frame(real), _frame(fake)
            train_df = _frame(train) if train is not None else None
            if "descriptors" in active:
                _guard(out, skipped, "descriptors", lambda: {
                    "generated": descriptor_distances(real_df, fake_df),
                    "real_reference": descriptor_distances(real_df, train_df) if train_df is not None else None,
                    "unit": "each descriptor's own (histosynth.slides.descriptors.DESCRIPTORS)", **memo})
            if "fidelity" in active:
                _guard(out, skipped, "fidelity",
                       lambda: _fidelity(real_df, fake_df, train_df, records, ws_root, mpp, crop, seed, memo))
    if "classes" in active:
        _guard(out, skipped, "classes", lambda: _classes(real, fake, train, records, ws_root, seed, memo))
    return out


def _fidelity(real_df, fake_df, train_df, records, ws_root, mpp, crop, seed, memo) -> dict:
    from ..slides.descriptors import bin_words, fit_edges

    basis = train_df if train_df is not None else real_df
    edges = fit_edges(basis, list(basis.columns), n_bins=len(LEVELS))
    bins = requested_descriptor_bins(records, ws_root, edges, mpp, crop)
    if not any(bins):
        raise ValueError("no generated image records a requested bin (metadata.jsonl: `bins`, template fields "
                         "such as `nuclei`, or `tile_id`)")
    own = bin_words(real_df, edges, levels=LEVELS)
    return {"generated": descriptor_fidelity(fake_df, bins, edges, seed),
            "real_reference": descriptor_fidelity(real_df, own, edges, seed),
            "edges": {k: [float(x) for x in v] for k, v in edges.items()},
            "edges_fitted_on": "real training tiles" if train_df is not None else "real test tiles", **memo}


def _classes(real, fake, train, records, ws_root, seed, memo) -> dict:
    if train is None or "labels" not in train:
        raise ValueError("needs labelled real training tiles (a workspace index `label` column or class sub-folders)")
    if "labels" not in real:
        raise ValueError("needs labelled real test tiles")
    labels = requested_labels(records, ws_root)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if len(keep) < 2:
        raise ValueError("no generated image records its requested class (metadata.jsonl `label` or `tile_id`)")
    result = class_fidelity(train["small"], list(map(str, train["labels"])), real["small"], list(map(str, real["labels"])),
                            fake["small"][keep], [str(labels[i]) for i in keep], seed=seed)
    return {**result, **memo}


def _guard(out: dict, skipped: dict, name: str, compute) -> None:
    try:
        out[name] = compute()
    except (ValueError, KeyError, TypeError) as exc:
        skipped[name] = str(exc) if not isinstance(exc, KeyError) else f"statistics lack {exc}"
