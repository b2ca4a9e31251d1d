"""Patch descriptors: what a tile shows, measured from its own pixels (units in docs/architecture.md).

Colour deconvolution (Ruifrok & Johnston, scikit-image's `rgb2hed`) splits each pixel's optical
density into haematoxylin (nuclei) and eosin (cytoplasm, collagen). Nuclei are segmented the
standard scikit-image way: the smoothed haematoxylin channel thresholded (Otsu, never below a floor
so that a tile without nuclei finds none), small specks removed, touching nuclei split by a watershed
on the distance transform seeded at its maxima at least one nuclear radius apart.

  nuclei_density   nuclei per mm^2 of tile (counted nuclei / tile area)
  nuclear_area     mean area of those nuclei, um^2 (0 when none: every consumer -- ranks, distances,
                   bins -- needs a number, and 0 sorts a tile without nuclei below all others)
  h_fraction       share of tissue pixels where haematoxylin density exceeds eosin's
  e_fraction       share of tissue pixels where eosin density is at least haematoxylin's
  fat_fraction     share of the tile that is clear (not tissue) yet within FAT_REACH_UM of tissue, in
                   clear regions no point of which lies farther than 2 x FAT_REACH_UM from tissue:
                   fat cells and lumina are bounded by membranes or epithelium, background glass
                   stretches away from it
  stroma_fraction  share of tissue pixels that are eosin-dominant and farther than STROMA_GAP_UM from
                   any nucleus (collagen and muscle, not the cytoplasm around nuclei)
  tissue_fraction  share of the tile's pixels that are tissue: tissue.tissue_fraction, the tiler's own

Only numpy, scipy, scikit-image and pandas: no torch.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .tissue import tile_tissue_mask

DESCRIPTORS: "OrderedDict[str, tuple[str, str]]" = OrderedDict([
    ("nuclei_density", ("nuclei/mm^2", "nuclei segmented on the haematoxylin channel per mm^2 of tile")),
    ("nuclear_area", ("um^2", "mean area of the segmented nuclei (0 if none)")),
    ("h_fraction", ("fraction of tissue", "tissue pixels where haematoxylin density exceeds eosin's")),
    ("e_fraction", ("fraction of tissue", "tissue pixels where eosin density is at least haematoxylin's")),
    ("fat_fraction", ("fraction of tile", "clear areas bounded by tissue (fat, lumina), not open glass")),
    ("stroma_fraction", ("fraction of tissue", "eosin-dominant tissue farther than 3 um from any nucleus")),
    ("tissue_fraction", ("fraction of tile", "tissue pixels, the tiler's own tissue fraction")),
])

# Template field of the condition text -> descriptor ({nuclei} -> nuclei_density).
TEMPLATE_FIELDS = {"nuclei": "nuclei_density", "nuclear_area": "nuclear_area", "h": "h_fraction",
                   "e": "e_fraction", "fat": "fat_fraction", "stroma": "stroma_fraction",
                   "tissue": "tissue_fraction"}
LEVELS = ("low", "medium", "high")

H_FLOOR = 0.045               # rgb2hed haematoxylin units: a nucleus is at least this dense
SMOOTH_UM = 0.5               # Gaussian smoothing of the haematoxylin channel before thresholding
NUCLEUS_MIN_UM2 = 8.0         # smaller objects are specks, not nuclei
NUCLEUS_RADIUS_UM = 2.5       # seeds of the watershed are at least this far apart (a small lymphocyte)
FAT_REACH_UM = 25.0
FAT_WALL_MIN_UM2 = 60.0       # tissue pieces smaller than this (dust, specks) bound no fat cell
FAT_MIN_UM2 = 30.0            # smaller clear gaps are between cells, not fat or lumen
STROMA_GAP_UM = 3.0


def column(name: str) -> str:
    """Descriptor -> its tile-index column."""
    return f"desc_{name}"


def hed(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin densities (scikit-image rgb2hed units) of an RGB uint8 image."""
    from skimage.color import rgb2hed

    stains = rgb2hed(image)
    return np.maximum(stains[..., 0], 0), np.maximum(stains[..., 1], 0)


def segment_nuclei(h: np.ndarray, mpp: float) -> np.ndarray:
    """Label image of nuclei from a haematoxylin density map (pixels `mpp` um wide)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    smooth = gaussian(h, sigma=max(SMOOTH_UM / mpp, 0.5))
    threshold = H_FLOOR
    if np.ptp(smooth) > 0:
        threshold = max(threshold_otsu(smooth), H_FLOOR)
    mask = ndi.binary_fill_holes(smooth > threshold)
    mask = remove_small_objects(mask, max_size=max(int(NUCLEUS_MIN_UM2 / mpp ** 2), 1))
    if not mask.any():
        return np.zeros(h.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    blobs, _ = ndi.label(mask)
    peaks = peak_local_max(distance, min_distance=max(int(round(NUCLEUS_RADIUS_UM / mpp)), 1),
                           labels=blobs, exclude_border=False)
    markers = np.zeros(h.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    # a blob without a peak (thin, flat) is still one nucleus
    missing = blobs * (labels == 0) * mask
    if missing.any():
        extra, _ = ndi.label(missing > 0)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def fat_mask(tissue: np.ndarray, mpp: float) -> np.ndarray:
    """Clear pixels within FAT_REACH_UM of tissue, in clear regions bounded by tissue (see module)."""
    from scipy import ndimage as ndi

    from skimage.morphology import remove_small_objects

    clear = ~tissue
    # the walls: tissue pieces of a membrane's size at least (dust on glass bounds nothing)
    tissue = remove_small_objects(tissue, max_size=max(int(FAT_WALL_MIN_UM2 / mpp ** 2), 1))
    if not tissue.any() or not clear.any():
        return np.zeros(tissue.shape, dtype=bool)
    distance = ndi.distance_transform_edt(clear) * mpp      # um to the nearest tissue pixel
    regions, n = ndi.label(clear)
    index = np.arange(1, n + 1)
    farthest = ndi.maximum(distance, regions, index)
    areas = ndi.sum(np.ones_like(distance), regions, index) * mpp ** 2
    bounded = np.zeros(n + 1, dtype=bool)
    bounded[1:] = (farthest <= 2 * FAT_REACH_UM) & (areas >= FAT_MIN_UM2)
    return bounded[regions] & (distance <= FAT_REACH_UM)


def describe_one(image: np.ndarray, mpp: float, tissue: np.ndarray | None = None) -> dict[str, float]:
    """Descriptors of one tile; `tissue`: its tile_tissue_mask when the caller has it already."""
    from scipy import ndimage as ndi

    h, e = hed(image)
    tissue = tile_tissue_mask(image, mpp) if tissue is None else tissue
    labels = segment_nuclei(h, mpp)
    n = int(labels.max())
    areas = np.bincount(labels.ravel())[1:] * mpp ** 2 if n else np.zeros(0)
    areas = areas[areas > 0]
    tile_mm2 = image.shape[0] * image.shape[1] * (mpp * 1e-3) ** 2
    n_tissue = max(int(tissue.sum()), 1)
    h_dom = tissue & (h > e)
    e_dom = tissue & ~(h > e)
    far = ndi.distance_transform_edt(labels == 0) * mpp > STROMA_GAP_UM if n else np.ones_like(tissue)
    return {
        "nuclei_density": len(areas) / tile_mm2,
        "nuclear_area": float(areas.mean()) if len(areas) else 0.0,
        "h_fraction": h_dom.sum() / n_tissue,
        "e_fraction": e_dom.sum() / n_tissue,
        "fat_fraction": float(fat_mask(tissue, mpp).mean()),
        "stroma_fraction": (e_dom & far).sum() / n_tissue,
        "tissue_fraction": float(tissue.mean()),
    }


def describe(images: np.ndarray, mpp: float):
    """One row of descriptors (DESCRIPTORS' units) per image; images uint8 [N, H, W, 3] or [H, W, 3]."""
    import pandas as pd

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"describe: expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    if not mpp > 0:
        raise ValueError(f"describe: mpp must be positive, got {mpp}")
    rows = [describe_one(image, mpp) for image in images]
    return pd.DataFrame(rows, columns=list(DESCRIPTORS)).astype("float64")


def fit_edges(df, names, n_bins: int = 3) -> dict[str, list[float]]:
    """Quantile edges (n_bins - 1 inner edges) per descriptor, fitted on `df` (training tiles); a
    column may be named `name` or `desc_name`."""
    edges = {}
    for name in names:
        col = name if name in df else column(name)
        values = np.asarray(df[col], dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            raise ValueError(f"fit_edges: no finite values of {name}")
        qs = np.quantile(values, np.arange(1, n_bins) / n_bins)
        edges[name] = [float(q) for q in qs]
    return edges


def bin_words(values, edges: dict[str, list[float]], levels=LEVELS) -> list[dict[str, str]]:
    """Words per row: a value at or below the first edge is levels[0], above the last is levels[-1];
    NaN (no nuclei, so no nuclear area) is levels[0]. Bins are closed on the right so that a
    zero-inflated descriptor (most tiles without fat: edges [0, 0]) says "low" for its zeros."""
    import pandas as pd

    frame = pd.DataFrame([values]) if isinstance(values, dict) else values
    out: list[dict[str, str]] = [{} for _ in range(len(frame))]
    for name, inner in edges.items():
        if len(inner) != len(levels) - 1:
            raise ValueError(f"bin_words: {name} has {len(inner)} edges for {len(levels)} levels")
        col = name if name in frame else column(name)
        v = np.asarray(frame[col], dtype=float)
        idx = np.where(np.isfinite(v), np.searchsorted(np.asarray(inner), np.nan_to_num(v), side="left"), 0)
        for row, i in zip(out, idx):
            row[name] = levels[int(i)]
    return out


def write_descriptors(f, values: dict) -> None:
    """The `descriptors` group of an open slide HDF5 file `f` (h5py): one float64 dataset per
    descriptor, with its unit and definition."""
    group = f.require_group("descriptors")
    for name, (unit, definition) in DESCRIPTORS.items():
        if name in group:
            del group[name]
        dset = group.create_dataset(name, data=np.asarray(values[name], dtype=np.float64))
        dset.attrs.update(unit=unit, definition=definition)
