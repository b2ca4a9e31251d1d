"""A small stand-in for `histosynth.slides.descriptors` (the slides engineer's module, same interface), installed
by the evaluate tests only while the real module is not importable. Not part of the package."""

from __future__ import annotations

import sys
import types

import numpy as np

DESCRIPTORS = {
    "h_fraction": ("share", "tissue pixels whose haematoxylin exceeds their eosin (rgb2hed)"),
    "tissue_fraction": ("share", "pixels darker than glass (mean RGB < 215)"),
}


def describe(images: np.ndarray, mpp: float):
    import pandas as pd
    from skimage.color import rgb2hed

    images = images[None] if images.ndim == 3 else images
    rows = []
    for img in images:
        tissue = img.mean(axis=2) < 215
        hed = rgb2hed(img)
        h_dom = (hed[..., 0] > hed[..., 1]) & tissue
        rows.append({"h_fraction": h_dom.sum() / max(tissue.sum(), 1), "tissue_fraction": tissue.mean()})
    return pd.DataFrame(rows, columns=list(DESCRIPTORS))


def fit_edges(df, names, n_bins=3):
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    return {n: [float(v) for v in np.quantile(df[n].to_numpy(float), qs)] for n in names}


def bin_words(values, edges, levels=("low", "medium", "high")):
    import pandas as pd

    frame = values if isinstance(values, pd.DataFrame) else pd.DataFrame([values])
    out = [{} for _ in range(len(frame))]
    for name, cuts in edges.items():
        if name in frame.columns:
            for i, v in enumerate(np.searchsorted(cuts, frame[name].to_numpy(float), side="right")):
                out[i][name] = levels[int(v)]
    return out


def install() -> None:
    """Make `histosynth.slides.descriptors` importable, unless the real one is."""
    try:
        import histosynth.slides.descriptors  # noqa: F401
    except ImportError:
        import histosynth.slides

        module = types.ModuleType("histosynth.slides.descriptors")
        module.DESCRIPTORS, module.describe, module.fit_edges, module.bin_words = DESCRIPTORS, describe, fit_edges, bin_words
        sys.modules["histosynth.slides.descriptors"] = module
        histosynth.slides.descriptors = module
