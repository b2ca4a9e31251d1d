"""Patch descriptors: the acceptance checks on real labelled Kather 2016 tiles, and exact counts on
synthetic tiles with known nuclei."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histosynth.slides.descriptors import DESCRIPTORS, bin_words, describe, fit_edges
from histosynth.slides.tissue import tissue_fraction

from conftest import shared_file

KATHER_SETS = {"tiles/kather2016_tiles_original": 0.495,
               "tiles/kather2016_tiles_tfds_resized224": 0.495 * 150 / 224}  # upsampled by a third party


def kather_tiles():
    from PIL import Image

    for folder, mpp in KATHER_SETS.items():
        root = shared_file(folder)
        for path in sorted(root.glob("*/*")):
            if path.suffix.lower() in (".png", ".tif", ".tiff"):
                yield path.parent.name.split("_", 1)[1], np.asarray(Image.open(path).convert("RGB")), mpp


@pytest.fixture(scope="module")
def kather_medians():
    full, crops = [], []
    for label, rgb, mpp in kather_tiles():
        full.append(describe(rgb, mpp).assign(label=label))
        crops.append(describe(np.ascontiguousarray(rgb[:64, :64]), mpp).assign(label=label))
    return {"full": pd.concat(full).groupby("label").median(),
            "crop64": pd.concat(crops).groupby("label").median()}


@pytest.mark.parametrize("kind", ["full", "crop64"])
def test_kather_class_medians_order_as_histology_says(kather_medians, kind):
    med = kather_medians[kind]
    assert len(med) == 8
    assert med["fat_fraction"].idxmax() == "ADIPOSE", med["fat_fraction"]
    assert med.loc["ADIPOSE", "tissue_fraction"] > med.loc["EMPTY", "tissue_fraction"]
    assert med["nuclei_density"].idxmax() == "LYMPHO", med["nuclei_density"]
    assert med["tissue_fraction"].idxmin() == "EMPTY", med["tissue_fraction"]
    # and the H/E split follows the stains: lymphocytes haematoxylin, stroma eosin
    assert med.loc["LYMPHO", "h_fraction"] > 0.8 and med.loc["STROMA", "e_fraction"] > 0.8
    assert med["stroma_fraction"].idxmax() == "STROMA"


def synthetic_nuclei(n: int, radius_px: float, size: int = 384, seed: int = 0):
    """An H&E-like tile (Beer-Lambert stain mix) with `n` round nuclei, some of them touching."""
    from skimage.color import hed2rgb

    rng = np.random.default_rng(seed)
    centres: list[tuple[float, float]] = []
    while len(centres) < n:
        if centres and rng.random() < 0.3:   # a touching neighbour of an earlier nucleus
            cy, cx = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            c = (cy + 2.05 * radius_px * np.sin(angle), cx + 2.05 * radius_px * np.cos(angle))
        else:
            c = tuple(rng.uniform(radius_px + 2, size - radius_px - 2, size=2))
        inside = radius_px + 1 < c[0] < size - radius_px - 1 and radius_px + 1 < c[1] < size - radius_px - 1
        if inside and all(np.hypot(c[0] - a, c[1] - b) > 2.02 * radius_px for a, b in centres):
            centres.append(c)
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), dtype=bool)
    density = np.full((size, size), 0.005)
    for cy, cx in centres:       # nuclei differ in how dark they stain
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px ** 2
        nuclei |= disk
        density[disk] = rng.uniform(0.08, 0.16)
    stains = np.zeros((size, size, 3))
    stains[..., 1] = 0.03 + 0.005 * rng.standard_normal((size, size))     # eosin everywhere
    stains[..., 0] = gaussian_filter(density, 0.7) + 0.005 * rng.standard_normal((size, size))  # optics blur
    rgb = (np.clip(hed2rgb(stains), 0, 1) * 255).round().astype(np.uint8)
    return rgb, int(nuclei.sum())


@pytest.mark.unit
@pytest.mark.parametrize("n,radius_um,mpp", [(30, 4.0, 0.5), (60, 3.0, 0.5), (25, 5.0, 0.25)])
def test_synthetic_nuclei_count_and_area(n, radius_um, mpp):
    for seed in range(3):
        rgb, painted_px = synthetic_nuclei(n, radius_um / mpp, seed=seed)
        row = describe(rgb, mpp).iloc[0]
        tile_mm2 = (rgb.shape[0] * mpp * 1e-3) ** 2
        count = row["nuclei_density"] * tile_mm2
        true_area = painted_px * mpp ** 2 / n
        assert abs(count - n) <= 0.10 * n, (seed, count, n)
        assert abs(row["nuclear_area"] - true_area) <= 0.15 * true_area, (seed, row["nuclear_area"], true_area)


@pytest.mark.unit
def test_describe_shapes_units_and_determinism():
    rgb, _ = synthetic_nuclei(10, 8.0, size=128)
    a, b = describe(np.stack([rgb, rgb]), 0.5), describe(rgb, 0.5)
    assert list(a.columns) == list(DESCRIPTORS) and len(a) == 2 and len(b) == 1
    pd.testing.assert_frame_equal(a.iloc[:1], b)
    assert b.loc[0, "tissue_fraction"] == pytest.approx(float(tissue_fraction(rgb, 0.5)[0]))
    with pytest.raises(ValueError, match="uint8"):
        describe(rgb.astype(np.float32), 0.5)


@pytest.mark.unit
def test_fit_edges_and_bin_words():
    df = pd.DataFrame({"desc_nuclei_density": np.arange(9.0), "desc_nuclear_area": [np.nan] + [1.0] * 8})
    edges = fit_edges(df, ["nuclei_density"])
    assert len(edges["nuclei_density"]) == 2
    words = bin_words(df, edges)
    assert [w["nuclei_density"] for w in words] == ["low"] * 3 + ["medium"] * 3 + ["high"] * 3
    assert bin_words({"nuclei_density": 100.0}, edges) == [{"nuclei_density": "high"}]
    assert bin_words(df, {"nuclear_area": [0.5, 2.0]})[0]["nuclear_area"] == "low"   # NaN (a missing value): low


@pytest.mark.unit
def test_a_zero_inflated_descriptor_says_low_for_its_zeros():
    """Most tiles have no fat: the tercile edges tie at 0, and a tile without fat must not read "high fat"."""
    df = pd.DataFrame({"desc_fat_fraction": [0.0] * 8 + [0.3, 0.6]})
    edges = fit_edges(df, ["fat_fraction"])
    assert edges["fat_fraction"] == [0.0, 0.0]
    words = [w["fat_fraction"] for w in bin_words(df, edges)]
    assert words == ["low"] * 8 + ["high"] * 2


@pytest.mark.unit
def test_a_tile_without_nuclei_has_zero_density_and_area():
    glass = np.full((64, 64, 3), 235, dtype=np.uint8)
    row = describe(glass, 0.5).iloc[0]
    assert row["nuclei_density"] == 0 and row["nuclear_area"] == 0 and row["tissue_fraction"] == 0
    assert describe(glass, 0.5).notna().all(axis=None)


# ---- the fast steps of segment_nuclei equal the scikit-image/scipy calls they replace --------------

def reference_segment_nuclei(h: np.ndarray, mpp: float) -> np.ndarray:
    """segment_nuclei as first written, with scikit-image's peak_local_max, scipy's
    binary_fill_holes: the fast version must give the very same label image."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    from histosynth.slides import descriptors as d

    smooth = gaussian(h, sigma=max(d.SMOOTH_UM / mpp, 0.5))
    threshold = max(threshold_otsu(smooth), d.H_FLOOR) if np.ptp(smooth) > 0 else d.H_FLOOR
    mask = remove_small_objects(ndi.binary_fill_holes(smooth > threshold),
                                max_size=max(int(d.NUCLEUS_MIN_UM2 / mpp ** 2), 1))
    if not mask.any():
        return np.zeros(h.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    blobs, _ = ndi.label(mask)
    peaks = peak_local_max(distance, min_distance=max(int(round(d.NUCLEUS_RADIUS_UM / mpp)), 1),
                           labels=blobs, exclude_border=False)
    markers = np.zeros(h.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    missing = blobs * (labels == 0) * mask
    if missing.any():
        extra, _ = ndi.label(missing > 0)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def random_masks(n: int = 60, seed: int = 0):
    """Blobs of every kind: touching, thin and flat (all pixels peaks), single pixels, no background."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (int(rng.integers(8, 100)), int(rng.integers(8, 100)))
        noise = ndi.gaussian_filter(rng.standard_normal(shape), rng.uniform(0.5, 4))
        mask = noise > rng.uniform(-0.5, 0.8) * noise.std()
        if i % 6 == 1:
            mask[::3] = True
            mask[:, ::4] = False
        elif i % 6 == 2:
            mask = rng.random(shape) > 0.7
        elif i % 6 == 3:
            mask[:] = True
        yield mask


@pytest.mark.unit
def test_blob_peaks_fill_holes_and_near_equal_the_library_calls():
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from histosynth.slides.descriptors import blob_peaks, fill_holes, near

    for mask in random_masks():
        distance = ndi.distance_transform_edt(mask)
        blobs, _ = ndi.label(mask)
        for k in (1, 2, 5, 8):        # same peaks in the same order (they number the nuclei)
            expected = peak_local_max(distance, min_distance=k, labels=blobs, exclude_border=False)
            np.testing.assert_array_equal(blob_peaks(distance, blobs, k), expected)
        np.testing.assert_array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
        if mask.any() and not mask.all():
            for mpp in (0.25, 0.499, 1.0, 2.0):
                expected = ~(ndi.distance_transform_edt(~mask) * mpp > 3.0)
                np.testing.assert_array_equal(near(mask, mpp, 3.0), expected)


def test_segment_nuclei_equals_the_reference_on_real_tiles(real_slide):
    """Real H&E: Kather tiles at both scales, CMU-1 tiles at 0.5 and 1 um/px."""
    import openslide
    from PIL import Image

    from histosynth.slides.descriptors import hed, segment_nuclei

    slide = openslide.OpenSlide(str(real_slide))
    region = slide.read_region((600, 1200), 0, (1024, 768)).convert("RGB")
    half = np.asarray(region.resize((512, 384), Image.Resampling.BILINEAR))
    cases = [(np.asarray(region)[y:y + 256, x:x + 256], 0.499) for y in (0, 256, 512) for x in (0, 384, 768)]
    cases += [(half[y:y + 128, x:x + 128], 1.0) for y in (0, 128, 256) for x in (0, 192, 384)]
    cases += [(rgb, mpp) for _, rgb, mpp in kather_tiles()]
    nuclei = 0
    for rgb, mpp in cases:
        h, _ = hed(np.ascontiguousarray(rgb))
        expected = reference_segment_nuclei(h, mpp)
        np.testing.assert_array_equal(segment_nuclei(h, mpp), expected)
        nuclei += int(expected.max())
    assert nuclei > 1000      # the comparison saw real nuclei, not empty tiles
