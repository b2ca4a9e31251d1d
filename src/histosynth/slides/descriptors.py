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

import math
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
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    smooth = gaussian(h, sigma=max(SMOOTH_UM / mpp, 0.5))
    threshold = H_FLOOR
    if np.ptp(smooth) > 0:
        threshold = max(threshold_otsu(smooth), H_FLOOR)
    mask = fill_holes(smooth > threshold)
    mask = remove_small_objects(mask, max_size=max(int(NUCLEUS_MIN_UM2 / mpp ** 2), 1))
    if not mask.any():
        return np.zeros(h.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    blobs, _ = ndi.label(mask)
    peaks = blob_peaks(distance, blobs, min_distance=max(int(round(NUCLEUS_RADIUS_UM / mpp)), 1))
    markers = np.zeros(h.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    # a blob without a peak (thin, flat) is still one nucleus
    missing = blobs * (labels == 0) * mask
    if missing.any():
        extra, _ = ndi.label(missing > 0)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`scipy.ndimage.binary_fill_holes(mask)` (4-connected background) by one labelling of the
    background: what does not reach the tile's edge is a hole. Its iterated dilation cost 3x more."""
    from scipy import ndimage as ndi

    background, n = ndi.label(~mask)
    reaches_edge = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        reaches_edge[edge] = True
    reaches_edge[0] = False             # label 0: the mask itself
    return ~reaches_edge[background]


def blob_peaks(distance: np.ndarray, blobs: np.ndarray, min_distance: int) -> np.ndarray:
    """The peaks, in the same order, that scikit-image's `peak_local_max(distance, min_distance,
    labels=blobs, exclude_border=False)` finds (tests/test_descriptors.py compares them), without
    its Python loop over blobs: that loop cost ~0.2 ms per blob, a third of a tile's descriptors.

    peak_local_max treats every blob on its own: a peak is a pixel equal to the maximum of its own
    blob's pixels within a (2 min_distance + 1)^2 window; a blob all of whose pixels are peaks (a
    flat one) keeps only the pixels an opening removes; peaks must exceed the image's minimum; then,
    highest first (ties in raster order), a peak closer than min_distance (Chebyshev) to a kept peak
    of its blob is dropped. Here blobs far enough apart share one maximum filter (a colour), and the
    spacing runs once over all blobs with the blobs moved apart."""
    from scipy import ndimage as ndi

    n = int(blobs.max())
    if n == 0:
        return np.zeros((0, 2), dtype=np.intp)
    slices = ndi.find_objects(blobs)
    colour = np.concatenate([[-1], colour_blobs(slices, reach=min_distance)])[blobs]
    local_max = np.zeros_like(distance)
    for c in range(int(colour.max()) + 1):
        mine = colour == c
        # the window of a pixel of this colour sees no other blob of this colour (colour_blobs):
        # the maximum over the colour's pixels is the maximum over the pixel's own blob
        rows, cols = np.nonzero(mine.any(1))[0], np.nonzero(mine.any(0))[0]
        box = (slice(max(rows[0] - min_distance, 0), rows[-1] + min_distance + 1),
               slice(max(cols[0] - min_distance, 0), cols[-1] + min_distance + 1))
        own = np.where(mine[box], distance[box], np.finfo(distance.dtype).min)
        filtered = ndi.maximum_filter(own, size=2 * min_distance + 1, mode="nearest")
        local_max[box][mine[box]] = filtered[mine[box]]
    peak = (distance == local_max) & (blobs > 0)
    sizes = np.bincount(blobs.ravel(), minlength=n + 1)
    flat = np.bincount(blobs[peak], minlength=n + 1) == sizes
    flat[0] = False
    if flat.any():   # a blob of peaks only: its pixels an opening removes (isolated ones)
        in_flat = flat[blobs]
        peak = np.where(in_flat, in_flat ^ ndi.binary_opening(in_flat), peak)
    peak &= distance > distance.min()
    rows, cols = np.nonzero(peak)
    label, height = blobs[rows, cols], distance[rows, cols]
    order = np.lexsort((-height, label))          # per blob, highest first, ties in raster order
    rows, cols, label = rows[order], cols[order], label[order]
    if min_distance > 1 and len(rows):
        keep = spaced(rows, cols + label * (blobs.shape[1] + min_distance), min_distance)
        rows, cols = rows[keep], cols[keep]
    return np.stack([rows, cols], axis=1)


def colour_blobs(slices: list, reach: int) -> np.ndarray:
    """A colour (0, 1, ...) per blob such that the bounding boxes of two blobs of one colour stay
    apart when grown by `reach` px: greedy, in label order."""
    box = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in slices])
    meet = ((box[:, None, 0] - reach < box[None, :, 1]) & (box[None, :, 0] - reach < box[:, None, 1])
            & (box[:, None, 2] - reach < box[None, :, 3]) & (box[None, :, 2] - reach < box[:, None, 3]))
    colour = np.full(len(box), -1)
    for i in range(len(box)):
        taken = np.zeros(len(box) + 1, dtype=bool)
        taken[colour[meet[i]][colour[meet[i]] >= 0]] = True
        colour[i] = int(np.argmin(taken))
    return colour


def spaced(rows: np.ndarray, cols: np.ndarray, spacing: int) -> np.ndarray:
    """Greedy in the given order: keep a point unless a kept point lies closer than `spacing`
    (Chebyshev, integer coordinates), as scikit-image's ensure_spacing. Boolean mask of kept points."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.stack([rows, cols], axis=1)).query_pairs(r=spacing - 0.5, p=np.inf, output_type="ndarray")
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.argsort(both[:, 0], kind="stable")]
    starts = np.searchsorted(both[:, 0], np.arange(len(rows) + 1))
    dropped = np.zeros(len(rows), dtype=bool)
    keep = np.zeros(len(rows), dtype=bool)
    for i in range(len(rows)):
        if not dropped[i]:
            keep[i] = True
            dropped[both[starts[i]:starts[i + 1], 1]] = True
    return keep


def near(objects: np.ndarray, mpp: float, reach_um: float) -> np.ndarray:
    """Pixels within `reach_um` of an `objects` pixel: exactly `~(distance_transform_edt(~objects) *
    mpp > reach_um)` (the same float arithmetic decides which squared pixel distances are near), as
    a dilation by that disk, one column shift at a time; a third of the distance transform's time."""
    from scipy import ndimage as ndi

    squares = np.arange((int(reach_um / mpp) + 2) ** 2)
    d2_max = int(squares[~(np.sqrt(squares.astype(np.float64)) * mpp > reach_um)].max())
    radius = math.isqrt(d2_max)
    width = objects.shape[1]
    out = np.zeros_like(objects)
    columns = {}                        # per |dx|: the objects grown vertically by what the disk allows
    for dx in range(-radius, radius + 1):
        if abs(dx) >= width:
            continue
        if abs(dx) not in columns:
            reach_y = math.isqrt(d2_max - dx * dx)
            columns[abs(dx)] = ndi.maximum_filter1d(objects, 2 * reach_y + 1, axis=0, mode="constant", cval=0)
        grown = columns[abs(dx)]
        if dx >= 0:
            out[:, dx:] |= grown[:, :width - dx]
        else:
            out[:, :width + dx] |= grown[:, -dx:]
    return out


def fat_mask(tissue: np.ndarray, mpp: float) -> np.ndarray:
    """Clear pixels within FAT_REACH_UM of tissue, in clear regions bounded by tissue (see module)."""
    from scipy import ndimage as ndi

    from skimage.morphology import remove_small_objects

    none = np.zeros(tissue.shape, dtype=bool)
    clear = ~tissue
    if not clear.any():
        return none
    regions, n = ndi.label(clear)
    big = np.bincount(regions.ravel(), minlength=n + 1) * mpp ** 2 >= FAT_MIN_UM2
    big[0] = False          # label 0: tissue
    # cheap checks first: only gaps between cells, or no walls (tissue pieces of a membrane's size
    # at least: dust on glass bounds nothing), and no distance map is needed
    if not big.any() or not remove_small_objects(tissue, max_size=max(int(FAT_WALL_MIN_UM2 / mpp ** 2), 1)).any():
        return none
    distance = ndi.distance_transform_edt(clear) * mpp      # um to the nearest tissue pixel
    # bounded: no point of the region farther than 2 x FAT_REACH_UM from tissue
    bounded = big & (np.bincount(regions[distance > 2 * FAT_REACH_UM], minlength=n + 1) == 0)
    return bounded[regions] & (distance <= FAT_REACH_UM)


def describe_one(image: np.ndarray, mpp: float, tissue: np.ndarray | None = None) -> dict[str, float]:
    """Descriptors of one tile; `tissue`: its tile_tissue_mask when the caller has it already."""
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
    far = ~near(labels > 0, mpp, STROMA_GAP_UM) if n and e_dom.any() else np.ones_like(tissue)
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
