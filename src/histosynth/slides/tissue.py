"""Tissue detection on a low-resolution image of the slide, and per-tile tissue fractions.

Like CLAM's TCGA preset: HSV saturation, median blur, Otsu threshold, morphological closing. Stained
tissue is coloured while glass is grey-white, so saturation separates them whatever the stain. Otsu
alone tends to split strongly from lightly stained tissue when tissue dominates the picture (pale
stroma, haematoxylin-only areas would be lost), so its threshold is clipped into a range that lies
above glass noise and below pale tissue. Pen marks (green/cyan ink, hue 0.2-0.58) and near-black
areas (marker, slide edges, dirt) are removed, then the mask is closed and cleaned.
"""

from __future__ import annotations

import numpy as np

SAT_RANGE = (0.03, 0.08)     # the Otsu threshold of saturation is clipped into this range
PEN_HUES = (0.20, 0.58)      # green to cyan: ink, never H&E or DAB/haematoxylin
DARK_VALUE = 0.20            # HSV value below this: black ink, slide edge, debris


def tissue_mask(rgb: np.ndarray, tile_px: float) -> np.ndarray:
    """Boolean tissue mask of an RGB image; `tile_px` is the tile edge in this image's pixels."""
    from skimage.color import rgb2hsv
    from skimage.filters import median, threshold_otsu
    from skimage.morphology import binary_closing, disk, remove_small_holes, remove_small_objects

    hsv = rgb2hsv(rgb)
    hue, value = hsv[..., 0], hsv[..., 2]
    sat = median((hsv[..., 1] * 255).astype(np.uint8), disk(2)) / 255.0
    threshold = SAT_RANGE[0]
    if np.ptp(sat) > 0:
        threshold = float(np.clip(threshold_otsu(sat), *SAT_RANGE))
    mask = sat > threshold
    mask &= ~((hue > PEN_HUES[0]) & (hue < PEN_HUES[1]) & (sat > threshold))
    mask &= value > DARK_VALUE
    mask = binary_closing(mask, disk(2))
    tile_area = max(tile_px, 1.0) ** 2
    mask = remove_small_objects(mask, min_size=max(int(tile_area * 0.25), 4))  # specks, dust
    return remove_small_holes(mask, area_threshold=max(int(tile_area), 4))     # lumina, tears


def tile_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Tissue fraction of each box [x0, y0, x1, y1] (mask pixels, float) via an integral image."""
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(boxes[:, 0]).astype(int), 0, w)
    y0 = np.clip(np.floor(boxes[:, 1]).astype(int), 0, h)
    x1 = np.clip(np.maximum(np.ceil(boxes[:, 2]).astype(int), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(np.ceil(boxes[:, 3]).astype(int), y0 + 1), 0, h)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (inside / area).astype(np.float32)
