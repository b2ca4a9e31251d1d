"""Tissue detection on real glass, real tissue, their edges, and ink painted onto both.

The labelled set is built from the real CMU-1 slide (0.499 um/px): boxes of glass and of tissue
chosen by eye on the slide (README of ../shared/data shows it), boxes across tissue edges, and
strokes of red, blue, green and black ink painted by this test onto real glass and real tissue
(Beer-Lambert: an ink multiplies the light through the section by its transmittance). Every preset's
grid (tiny-cpu 64 px at 0.5 um/px; pathldm and rao-gupta 256 px at 1.0) is checked at its own
mask resolution. Lymphocyte-dense Kather tiles must never read as blue or black ink.
"""

from __future__ import annotations

import numpy as np
import pytest

from histosynth.slides.tissue import INK_COLOURS, ink_masks, tile_tissue_mask, tissue_fraction

from conftest import shared_file

MPP0 = 0.499
PRESET_GRIDS = {"tiny-cpu": (0.5, 64), "pathldm": (1.0, 256), "rao-gupta": (1.0, 256)}
GLASS = [(80, 1300, 440, 2500), (1680, 80, 2160, 520)]          # level-0 x0, y0, x1, y1
TISSUE = [(920, 1800, 1320, 2700), (980, 760, 1120, 1000)]
EDGES = [(400, 2000, 800, 2600), (1500, 1700, 1900, 2100)]
INK_TRANSMITTANCE = {"red": (1.0, 0.1, 0.12), "blue": (0.12, 0.3, 0.85), "green": (0.15, 0.65, 0.3),
                     "black": (0.07, 0.07, 0.08)}


@pytest.fixture(scope="module")
def cmu1() -> np.ndarray:
    import openslide

    slide = openslide.OpenSlide(str(shared_file("slides/CMU-1-Small-Region.svs")))
    return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))


def slide_mask(pixels: np.ndarray, mpp: float, size: int) -> np.ndarray:
    """The tiler's slide-level mask for a preset grid, expanded back to level-0 pixels."""
    from PIL import Image

    from histosynth.slides.tiler import overview_mask

    h, w = pixels.shape[:2]
    mask, fx, fy = overview_mask(Image.fromarray(pixels), (w, h), size * mpp / MPP0, MPP0)
    ys = np.minimum((np.arange(h) / fy).astype(int), mask.shape[0] - 1)
    xs = np.minimum((np.arange(w) / fx).astype(int), mask.shape[1] - 1)
    return mask[ys][:, xs]


def boxes_mean(mask: np.ndarray, boxes) -> float:
    return float(np.mean(np.concatenate([mask[y0:y1, x0:x1].ravel() for x0, y0, x1, y1 in boxes])))


def at_mpp(pixels: np.ndarray, mpp: float) -> np.ndarray:
    from PIL import Image

    f = MPP0 / mpp
    im = Image.fromarray(pixels)
    return np.asarray(im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.BOX))


@pytest.mark.parametrize("preset", list(PRESET_GRIDS))
def test_glass_and_tissue_accuracy_at_every_preset(cmu1, preset):
    mpp, size = PRESET_GRIDS[preset]
    mask = slide_mask(cmu1, mpp, size)
    glass_acc, tissue_acc = 1 - boxes_mean(mask, GLASS), boxes_mean(mask, TISSUE)
    assert glass_acc >= 0.95 and tissue_acc >= 0.95, (preset, glass_acc, tissue_acc)
    # the tile-level rule (what the tiler records, on the tile's own pixels at the target mpp)
    for boxes, want in ((GLASS, False), (TISSUE, True)):
        for x0, y0, x1, y1 in boxes:
            crop = at_mpp(cmu1[y0:y1, x0:x1], mpp)
            acc = float((tile_tissue_mask(crop, mpp) == want).mean())
            assert acc >= 0.95, (preset, (x0, y0), want, acc)
    # across tissue edges the slide-level mask agrees with the full-resolution pixel rule
    reference = tile_tissue_mask(cmu1, MPP0)
    agree = float(np.mean(np.concatenate([(mask == reference)[y0:y1, x0:x1].ravel() for x0, y0, x1, y1 in EDGES])))
    assert agree >= 0.85, (preset, agree)


def test_kept_tiles_record_their_own_tissue_fraction(cmu1, tmp_path):
    import tifffile

    from histosynth.slides.index import read_index
    from histosynth.slides.store import TileStore
    from histosynth.slides.tiler import tile_slides
    from histosynth.workspace import Workspace

    # a scan-area edge: the tissue framed by white (outside the scan) then glass, as on full slides
    framed = np.full((cmu1.shape[0] + 600, cmu1.shape[1] + 600, 3), 255, dtype=np.uint8)
    framed[300:-300, 300:-300] = cmu1
    path = tmp_path / "framed.tif"
    tifffile.imwrite(path, framed, photometric="rgb", rowsperstrip=64)
    for preset, (mpp, size) in PRESET_GRIDS.items():
        ws = Workspace(tmp_path / preset)
        cfg = ws.ensure_config(preset=preset, overrides=["slides.descriptors=false"])
        tile_slides(ws, cfg, [path], assume_mpp=MPP0)
        index = read_index(ws)
        pixels = TileStore(ws).get(index["tile_id"])
        own = tissue_fraction(pixels, mpp)
        assert np.abs(index["tissue"].to_numpy() - own).max() <= 0.05, preset
        assert (own >= cfg.slides.min_tissue).all(), preset
        # no kept tile is mostly glass by the labelled glass boxes
        glass = np.zeros(framed.shape[:2], dtype=bool)
        for x0, y0, x1, y1 in GLASS:
            glass[y0 + 300:y1 + 300, x0 + 300:x1 + 300] = True
        extent = size * mpp / MPP0
        for x, y in index[["x", "y"]].to_numpy():
            share = glass[int(y):int(y + extent), int(x):int(x + extent)].mean()
            assert share < 0.5, (preset, x, y, share)


def stroke(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    centre, slope = rng.uniform(0.35, 0.65) * h, rng.uniform(-0.3, 0.3)
    return np.abs(yy - (centre + slope * (xx - w / 2))) < 0.12 * h


@pytest.mark.parametrize("colour", INK_COLOURS)
def test_ink_of_every_colour_is_found_on_glass_and_tissue(cmu1, colour):
    recalls = {}
    for where, (x0, y0, x1, y1) in (("glass", (80, 1300, 592, 1812)), ("tissue", (900, 1900, 1412, 2412))):
        background = cmu1[y0:y1, x0:x1]
        painted = stroke(background.shape[:2], seed=len(colour))
        inked = np.where(painted[..., None], (background * np.array(INK_TRANSMITTANCE[colour])).astype(np.uint8),
                         background)
        for mpp in (MPP0, 2.0, 8.0, 16.0):        # tile pixels ... the 10x presets' slide-mask pixels
            small, ref = at_mpp(inked, mpp), at_mpp(painted.astype(np.uint8) * 255, mpp) > 127
            found = ink_masks(small, mpp)
            recalls[(where, mpp)] = float(np.logical_or.reduce(list(found.values()))[ref].mean())
            assert not tile_tissue_mask(small, mpp)[ref].mean() > 0.1, (where, mpp)
    assert min(recalls.values()) >= 0.9, recalls


@pytest.mark.unit
def test_lymphocyte_sheets_are_never_blue_or_black_ink():
    from PIL import Image

    folders = {"tiles/kather2016_tiles_original/04_LYMPHO": 0.495,
               "tiles/kather2016_tiles_tfds_resized224/04_LYMPHO": 0.495 * 150 / 224}
    n = 0
    for folder, mpp in folders.items():
        for path in sorted(shared_file(folder).iterdir()):
            rgb = np.asarray(Image.open(path).convert("RGB"))
            for scale in (mpp, 2.0):
                found = ink_masks(at_mpp(rgb, scale) if scale != mpp else rgb, scale)
                assert not found["blue"].any() and not found["black"].any(), (path.name, scale)
            n += 1
    assert n >= 15


def plain_stained(rgb: np.ndarray, mpp: float, sat_threshold: float) -> np.ndarray:
    """The pixel rule as first written (3x3 median of HSV saturation, grey = channel mean): the
    reference that the faster `stained` must equal pixel for pixel."""
    from scipy.ndimage import median_filter, uniform_filter

    from histosynth.slides import tissue

    rgbf = rgb.astype(np.float32)
    top, low = rgbf.max(-1), rgbf.min(-1)
    mask = median_filter(np.where(top > 0, (top - low) / np.maximum(top, 1e-6), 0.0), size=3) > sat_threshold
    if mpp <= tissue.TEXTURE_MAX_UM:
        grey = rgbf.mean(-1)
        mean = uniform_filter(grey, 3)
        mask |= np.sqrt(np.maximum(uniform_filter(grey * grey, 3) - mean * mean, 0)) > tissue.TEXTURE_STD
    inks, tint = tissue._ink_and_tint(rgb, mpp)
    return mask & ~tint & ~np.logical_or.reduce(list(inks.values()))


@pytest.mark.unit
def test_fast_pixel_rule_equals_the_plain_one_on_real_tiles(cmu1):
    from PIL import Image

    from histosynth.slides.tissue import TILE_SAT, stained

    tiles = [(cmu1[y:y + 256, x:x + 256], MPP0) for y in range(0, 2700, 400) for x in range(0, 1950, 400)]
    tiles += [(at_mpp(cmu1[:1024, :1024], 2.0), 2.0)]  # coarse: no texture term
    for path in sorted(shared_file("tiles/kather2016_tiles_original/01_TUMOR").iterdir())[:3]:
        tiles.append((np.asarray(Image.open(path).convert("RGB")), 0.495))
    for rgb, mpp in tiles:
        for threshold in (TILE_SAT, 0.03, 0.08):
            assert np.array_equal(stained(rgb, mpp, threshold), plain_stained(rgb, mpp, threshold)), (mpp, threshold)
