"""Tissue detection on a low-resolution image of the slide, and per-tile tissue fractions.

Like CLAM's TCGA preset: HSV saturation, median blur, Otsu threshold, morphological closing. Stained
tissue is coloured while glass is grey-white, so saturation separates them whatever the stain. Otsu
alone tends to split strongly from lightly stained tissue when tissue dominates the picture, so its
threshold is clipped into a range just above glass. Very pale tissue (loose stroma, weak IHC
counterstain) is barely more saturated than glass but has texture (nuclei, fibres) where glass is
flat, so a high local grey-level spread also marks tissue. Pen ink (green to cyan hues) and
near-black areas (marker, slide edges, debris) are removed, with a margin so their outlines go too;
then the mask is closed, specks are dropped and holes smaller than a tile (lumina) are filled.
"""

from __future__ import annotations

import numpy as np

SAT_RANGE = (0.03, 0.08)     # the Otsu threshold of saturation is clipped into this range
TEXTURE_STD = 4.0            # grey levels (0-255): local spread above this is tissue, not glass
PEN_HUES = (0.20, 0.58)      # green to cyan: ink, never H&E, DAB or haematoxylin
DARK_VALUE = 0.20            # HSV value below this: black ink, slide edge, debris


def tissue_mask(rgb: np.ndarray, tile_px: float) -> np.ndarray:
    """Boolean tissue mask of an RGB image; `tile_px` is the tile edge in this image's pixels."""
    from scipy.ndimage import uniform_filter
    from skimage.color import rgb2hsv
    from skimage.filters import median, threshold_otsu
    from skimage.morphology import closing, dilation, disk, remove_small_holes, remove_small_objects

    hsv = rgb2hsv(rgb)
    hue, value = hsv[..., 0], hsv[..., 2]
    sat = median((hsv[..., 1] * 255).astype(np.uint8), disk(2)) / 255.0
    threshold = SAT_RANGE[0]
    if np.ptp(sat) > 0:
        threshold = float(np.clip(threshold_otsu(sat), *SAT_RANGE))
    grey = rgb.astype(np.float32).mean(-1)
    mean = uniform_filter(grey, 3)
    spread = np.sqrt(np.maximum(uniform_filter(grey * grey, 3) - mean * mean, 0))
    mask = (sat > threshold) | (spread > TEXTURE_STD)
    artefact = ((hue > PEN_HUES[0]) & (hue < PEN_HUES[1]) & (sat > threshold)) | (value < DARK_VALUE)
    mask &= ~dilation(artefact, disk(2))
    mask = closing(mask, disk(2))
    tile_area = max(tile_px, 1.0) ** 2
    mask = remove_small_objects(mask, max_size=max(int(tile_area * 0.25), 4))  # specks, dust
    return remove_small_holes(mask, max_size=max(int(tile_area), 4))           # lumina, tears


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
