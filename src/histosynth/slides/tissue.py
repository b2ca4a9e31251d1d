"""Tissue detection: a slide-level mask that picks candidate tiles, and THE tissue fraction of a tile.

Pixel rule (both levels). Stained tissue is coloured while glass is grey-white, so HSV saturation
separates them whatever the stain (CLAM's TCGA preset: saturation, median blur, Otsu). Very pale
tissue (loose stroma, weak IHC counterstain) is barely more saturated than glass but has texture
(nuclei, fibres) where glass is flat, so a high local grey-level spread also marks tissue -- but only
where pixels are fine enough to resolve nuclei (<= TEXTURE_MAX_UM): on a coarse overview the spread
is that of the scan-area edge and of the tissue border, which made closing fill glass.

Ink is found on the picture smoothed over INK_SIGMA_UM (a stroke is wider than a cell; smoothing
keeps a dense lymphocyte sheet, whose nuclei alone are near-black and blue-purple, from reading as
ink), by colour in optical density (Beer-Lambert: ink adds its own absorbance to the tissue's):
  red    -- absorbs green and blue alike and no red: OD_B / OD_G high, OD_R / OD_G low (eosin
            absorbs far less blue than green; DAB absorbs red too);
  blue   -- hue between cyan and haematoxylin's blue-purple, strongly saturated;
  green  -- green to cyan hues, never H&E, DAB or haematoxylin;
  black  -- very dark after smoothing, or dark and grey (marker, slide edges, debris).

`tissue_mask` (slide level) then closes the mask, drops specks and fills holes smaller than a tile.
`tissue_fraction` (tile level) is the share of a tile's own pixels that the pixel rule calls tissue,
with no hole filling: the tiler records it for every kept tile and the descriptors report it, so a
tile's recorded tissue fraction is always that of its pixels.
"""

from __future__ import annotations

import numpy as np

TISSUE_RULE = 2              # version of these rules, recorded per slide; slides tiled by another are redone
SAT_RANGE = (0.03, 0.08)     # the Otsu threshold of saturation is clipped into this range (slide level)
TILE_SAT = 0.06              # fixed saturation threshold of the tile-level rule (one tile has no Otsu)
TEXTURE_STD = 4.0            # grey levels (0-255): local spread above this is tissue, not glass
TEXTURE_MAX_UM = 4.0         # the texture rule applies only to pixels at most this many um wide
INK_SIGMA_UM = 6.0           # ink colours are judged on the picture smoothed over this many um
GREEN_HUES = (0.20, 0.52)    # green to cyan ink
BLUE_HUES = (0.52, 0.70)     # blue ink; haematoxylin (also in dense lymphocytes) sits above 0.72
BLUE_SAT = 0.45
RED_BG = 0.78                # red ink: OD_B / OD_G above this ...
RED_RG = 0.2                 # ... and OD_R / OD_G below this, with OD_G above RED_MIN_OD
RED_MIN_OD = 0.5
RED_HUE = 0.06               # ... or a red hue (within this of 0) saturated above RED_SAT
RED_SAT = 0.85
GREEN_SAT = 0.1
TINT_SAT = 0.02
BLACK_VALUE = 0.10           # smoothed HSV value below this: black ink, slide edge, debris ...
BLACK_GREY_VALUE = 0.2       # ... or below this and nearly grey (a dense lymphocyte sheet smooths
BLACK_GREY_SAT = 0.3         # to dark purple, value >= 0.14 and saturated)
INK_COLOURS = ("red", "blue", "green", "black")


def _reduce(rgb: np.ndarray, mpp: float | None) -> tuple[np.ndarray, int, float]:
    """The picture block-averaged by a factor that keeps INK_SIGMA_UM at >= 3 of its pixels (colour
    at the scale of an ink stroke does not need full resolution), smoothed over INK_SIGMA_UM.
    Returns (float RGB, factor, smoothing sigma in its pixels)."""
    from scipy.ndimage import gaussian_filter

    sigma = 0.0 if mpp is None else INK_SIGMA_UM / mpp
    factor = max(1, int(sigma // 3))
    x = rgb.astype(np.float32)
    if factor > 1:
        h, w = -(-x.shape[0] // factor) * factor, -(-x.shape[1] // factor) * factor
        x = np.pad(x, ((0, h - x.shape[0]), (0, w - x.shape[1]), (0, 0)), mode="edge")
        x = x.reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
    sigma /= factor
    if sigma >= 0.5:
        x = gaussian_filter(x, (sigma, sigma, 0), mode="nearest")
    return x, factor, sigma


def _expand(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    if factor > 1:
        mask = np.repeat(np.repeat(mask, factor, 0), factor, 1)
    return mask[:shape[0], :shape[1]]


def _ink(x: np.ndarray) -> dict[str, np.ndarray]:
    """Ink masks of a smoothed float RGB picture (0-255)."""
    from skimage.color import rgb2hsv

    od = -np.log10(np.clip(x, 1.0, 255.0) / 255.0)
    hsv = rgb2hsv(x / 255.0)
    r, g, b = od[..., 0], od[..., 1], od[..., 2]
    hue, sat, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    g_safe = np.maximum(g, 1e-3)
    red_hue = (hue > 1 - RED_HUE) | (hue < RED_HUE)
    # not ink, but the same smoothed colour: a faint green-cyan tint is glass or scanner, as no stain
    # is green-cyan (returned under "tint", never counted as ink)
    return {
        "red": ((g > RED_MIN_OD) & (b / g_safe > RED_BG) & (r / g_safe < RED_RG)) | (red_hue & (sat > RED_SAT)),
        "blue": (hue > BLUE_HUES[0]) & (hue < BLUE_HUES[1]) & (sat > BLUE_SAT),
        "green": (hue > GREEN_HUES[0]) & (hue <= GREEN_HUES[1]) & (sat > GREEN_SAT),
        "black": (value < BLACK_VALUE) | ((value < BLACK_GREY_VALUE) & (sat < BLACK_GREY_SAT)),
        "tint": (hue > GREEN_HUES[0]) & (hue <= GREEN_HUES[1]) & (sat > TINT_SAT),
    }


def _margin(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Grow an ink mask by the smoothing width, so that stroke outlines go too."""
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    return binary_dilation(mask, disk(max(1, int(round(sigma))))) if mask.any() else mask


def _ink_and_tint(rgb: np.ndarray, mpp: float | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    x, factor, sigma = _reduce(rgb, mpp)
    found = _ink(x)
    shape = rgb.shape[:2]
    inks = {c: _expand(_margin(found[c], sigma if mpp else 2), factor, shape) for c in INK_COLOURS}
    return inks, _expand(found["tint"], factor, shape)


def ink_masks(rgb: np.ndarray, mpp: float | None) -> dict[str, np.ndarray]:
    """Boolean mask per ink colour (INK_COLOURS) of an RGB uint8 image whose pixels are `mpp` um wide."""
    return _ink_and_tint(rgb, mpp)[0]


def ink_mask(rgb: np.ndarray, mpp: float | None) -> np.ndarray:
    return np.logical_or.reduce(list(ink_masks(rgb, mpp).values()))


def stained(rgb: np.ndarray, mpp: float | None, sat_threshold: float, with_ink: bool = False):
    """The pixel rule: saturated or textured (at fine resolution), not green-cyan tinted, not ink."""
    from scipy.ndimage import correlate, uniform_filter

    # Runs on every candidate tile, so written for speed with the same result as the plain version
    # (3x3 median of HSV saturation > t; grey = channel mean), which tests/test_tissue.py keeps beside it.
    rgbf = rgb.astype(np.float32)
    r, g, b = rgbf[..., 0], rgbf[..., 1], rgbf[..., 2]
    top, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    saturated = np.where(top > 0, (top - low) / np.maximum(top, 1e-6), 0.0) > sat_threshold
    # the median of 9 values is > t exactly when at least 5 of them are (same 'reflect' border)
    mask = correlate(saturated.astype(np.uint8), np.ones((3, 3), np.uint8), mode="reflect") >= 5
    if mpp is None or mpp <= TEXTURE_MAX_UM:
        grey = (r + g + b) / np.float32(3)  # sums of uint8 are exact in float32: equals rgbf.mean(-1)
        mean = uniform_filter(grey, 3)
        spread = np.sqrt(np.maximum(uniform_filter(grey * grey, 3) - mean * mean, 0))
        mask |= spread > TEXTURE_STD
    inks, tint = _ink_and_tint(rgb, mpp)
    ink = np.logical_or.reduce(list(inks.values()))
    mask &= ~tint & ~ink
    return (mask, ink) if with_ink else mask


def saturation_threshold(rgb: np.ndarray) -> float:
    """Otsu on the saturation of a whole-slide overview, clipped into SAT_RANGE: Otsu alone splits
    strongly from lightly stained tissue when tissue dominates the picture."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    sat = rgb2hsv(rgb)[..., 1]
    return float(np.clip(threshold_otsu(sat), *SAT_RANGE)) if np.ptp(sat) > 0 else SAT_RANGE[0]


def tissue_mask(rgb: np.ndarray, tile_px: float, mpp: float | None = None) -> np.ndarray:
    """Slide-level boolean tissue mask of an overview whose pixels are `mpp` um wide; `tile_px` is
    the tile edge in this image's pixels. Used to choose candidate tiles."""
    from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects

    mask, ink = stained(rgb, mpp, saturation_threshold(rgb), with_ink=True)
    mask = closing(mask, disk(2))
    tile_area = max(tile_px, 1.0) ** 2
    mask = remove_small_objects(mask, max_size=max(int(tile_area * 0.25), 4))  # specks, dust
    mask = remove_small_holes(mask, max_size=max(int(tile_area), 4))           # lumina, tears
    return mask & ~ink      # ink last: a stroke across tissue is not a hole to fill


def tile_tissue_mask(tile: np.ndarray, mpp: float) -> np.ndarray:
    """The pixels of one tile that count as tissue (the pixel rule with a fixed threshold)."""
    return stained(tile, mpp, TILE_SAT)


def tissue_fraction(images: np.ndarray, mpp: float) -> np.ndarray:
    """THE tissue fraction of tiles (uint8 [N, H, W, 3] or [H, W, 3]): float32 [N], the share of each
    tile's pixels that are tissue. The tiler records it; the `tissue_fraction` descriptor is it."""
    images = images[None] if images.ndim == 3 else images
    return np.array([tile_tissue_mask(t, mpp).mean() for t in images], dtype=np.float32)


def tile_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mask share of each box [x0, y0, x1, y1] (mask pixels, float) via an integral image: the
    slide-level estimate used to choose which tiles to read."""
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
