"""Plain images and tile datasets as input to `histosynth tile`, into the same workspace format.

OpenSlide stays the reader of whole-slide images (anything `OpenSlide.detect_format` recognises,
including tiled pyramidal TIFFs). Other PNG, JPEG and TIFF files (strip TIFFs included, common for
public H&E datasets) are plain images, read whole with Pillow / tifffile:

* a plain image larger than DATASET_TILE_MAX_PX on a side is tiled like a slide (`ImageSlide` gives
  it OpenSlide's interface: one level, no scale of its own, so `--assume-mpp` is required);
* smaller plain images are the tiles of a *tile dataset*: a folder of them (class sub-folders give
  the `label` column) or a CSV `path,caption[,case_id]` (paths relative to the CSV). Each image is
  rescaled from `--assume-mpp` to the target mpp and cut into the grid of `size` px tiles; all its
  tiles are kept (a curated dataset is taken whole; the tissue fraction is still recorded) and
  written with the dataset's other tiles into one `tiles/slides/<dataset_id>.h5` with per-tile
  `source`, `label`, `caption` and `case_id` datasets. A tile's case is the CSV's case_id, else its
  source image, so the case-level split keeps every tile of one source image on one side.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..console import HistosynthError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DATASET_TILE_MAX_PX = 2048   # plain images up to this on both sides are dataset tiles; larger: tiled like slides


def is_wsi(path: Path) -> bool:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:  # noqa: BLE001 - unreadable: let the slide reader report it
        return True


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a plain image without decoding it; None if not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError):
        pass
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
            return int(shape[1]), int(shape[0])
    except Exception:  # noqa: BLE001 - tifffile raises many kinds on non-TIFFs
        return None


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a PNG/JPEG/TIFF (strip or tiled, single level)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    try:
        import tifffile

        arr = tifffile.imread(path, key=0)
    except Exception as exc:  # noqa: BLE001
        raise HistosynthError(f"{path}: not a readable PNG, JPEG or TIFF image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise HistosynthError(f"{path}: image of shape {arr.shape}; expected RGB or greyscale")
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            raise HistosynthError(f"{path}: {arr.dtype} pixels; expected 8- or 16-bit")
    return np.ascontiguousarray(arr[..., :3])


class ImageSlide:
    """A plain image behind OpenSlide's interface (one level, no scale): the tiler reads it as a slide."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = image_size(self.path)
        if size is None:
            raise HistosynthError(f"{path}: not a readable PNG, JPEG or TIFF image")
        self._pixels: np.ndarray | None = None     # decoded on first read: opening only to learn the scale is cheap
        w, h = size
        self.dimensions = (w, h)
        self.level_count = 1
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.properties: dict[str, str] = {}

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = read_image(self.path)
        return self._pixels

    def read_region(self, location, level, size):
        from PIL import Image

        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        out = np.zeros((h, w, 4), dtype=np.uint8)     # outside the image: transparent, as OpenSlide
        H, W = self.pixels.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x, :3] = self.pixels[y0:y1, x0:x1]
            out[y0 - y:y1 - y, x0 - x:x1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def get_thumbnail(self, size):
        from PIL import Image

        thumb = Image.fromarray(self.pixels)
        thumb.thumbnail(size, Image.Resampling.BOX)
        return thumb

    def close(self) -> None:
        self._pixels = None


# ---- tile datasets --------------------------------------------------------------------------------

@dataclass
class Entry:
    path: Path
    source: str                   # path relative to the dataset root: the tile's source image
    label: str = ""
    caption: str = ""
    case_id: str = ""


@dataclass
class TileDatasetSpec:
    dataset_id: str
    root: Path
    entries: list[Entry] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Changes when an image is added, removed, renamed, resized on disk, or relabelled."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.source}\0{e.path.stat().st_size}\0{e.label}\0{e.caption}\0{e.case_id}\n".encode())
        return h.hexdigest()[:16]


def read_caption_csv(path: Path) -> TileDatasetSpec:
    """A CSV `path,caption[,case_id]` (paths relative to the CSV's folder)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HistosynthError(f"{path}: cannot read the CSV ({exc})") from None
    if not rows or not {"path", "caption"} <= set(rows[0]):
        raise HistosynthError(f"{path}: a tile CSV needs columns path,caption[,case_id]")
    spec = TileDatasetSpec(path.stem, path.parent)
    for i, row in enumerate(rows, start=2):
        image = (path.parent / (row["path"] or "")).resolve()
        if not row["path"] or not image.is_file():
            raise HistosynthError(f"{path}: line {i}: no such image '{row['path']}'")
        spec.entries.append(Entry(image, row["path"], caption=(row.get("caption") or "").strip(),
                                  case_id=(row.get("case_id") or "").strip()))
    return spec


def dataset_from_folder(folder: Path, images: list[Path]) -> TileDatasetSpec:
    """Images of a folder as one dataset; an image in a sub-folder is labelled with that folder's name."""
    spec = TileDatasetSpec(folder.name, folder)
    for image in sorted(images):
        rel = image.relative_to(folder)
        label = rel.parts[0] if len(rel.parts) > 1 else ""
        spec.entries.append(Entry(image, rel.as_posix(), label=label))
    return spec


def classify_folder(folder: Path, slide_suffixes: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """(slides, dataset tiles) of a folder: WSIs and large plain images are slides."""
    slides, tiles = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        suffix = p.suffix.lower()
        if suffix not in slide_suffixes and suffix not in IMAGE_SUFFIXES:
            continue
        if suffix in IMAGE_SUFFIXES and not is_wsi(p):
            size = image_size(p)
            if size is not None and max(size) <= DATASET_TILE_MAX_PX:
                tiles.append(p)
                continue
        slides.append(p)
    return slides, tiles


def grid_tiles(image: np.ndarray, scale: float, size: int, overlap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rescale an image by 1/scale (PIL, antialiased) and cut it into size px tiles; returns the
    tiles' top-left corners in the source image's pixels and the tiles."""
    from PIL import Image

    h, w = image.shape[:2]
    extent = size * scale
    step = (size - overlap) * scale
    xs = np.round(np.arange(int((w - extent) // step) + 1) * step).astype(np.int64) if w >= extent - 1e-6 else []
    ys = np.round(np.arange(int((h - extent) // step) + 1) * step).astype(np.int64) if h >= extent - 1e-6 else []
    coords, tiles = [], []
    pil = Image.fromarray(image)
    for y in ys:
        for x in xs:
            box = (float(x), float(y), min(x + extent, w), min(y + extent, h))
            tile = pil.resize((size, size), Image.Resampling.BILINEAR, box=box) if abs(scale - 1) > 1e-9 \
                else pil.crop((int(x), int(y), int(x) + size, int(y) + size))
            coords.append((x, y))
            tiles.append(np.asarray(tile.convert("RGB")))
    return np.asarray(coords, dtype=np.int64).reshape(-1, 2), tiles


def tile_dataset(spec: TileDatasetSpec, out: Path, cfg, assume_mpp: float | None, on_tiles=None) -> dict:
    """Write one dataset's tiles to `out` (an .h5 in the slide layout plus per-tile columns)."""
    import h5py

    from ..fileio import atomic_path
    from .descriptors import DESCRIPTORS, describe_one, write_descriptors
    from .tissue import TISSUE_RULE, tile_tissue_mask

    if not assume_mpp:
        raise HistosynthError(f"{spec.root}: plain images carry no scale; pass --assume-mpp X "
                              "(um per pixel of the images)")
    scale = cfg.mpp / assume_mpp
    columns: dict[str, list] = {k: [] for k in ("coords", "tissue", "source", "label", "caption", "case_id")}
    rows: list[dict] = []
    for stale in out.parent.glob(f".tmp-{out.stem}-*"):
        stale.unlink(missing_ok=True)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        imgs = f.create_dataset("imgs", shape=(0, cfg.size, cfg.size, 3), maxshape=(None, cfg.size, cfg.size, 3),
                                dtype=np.uint8, chunks=(1, cfg.size, cfg.size, 3),
                                compression=None if cfg.compression == "none" else cfg.compression,
                                compression_opts=cfg.gzip_level if cfg.compression == "gzip" else None)
        for n, entry in enumerate(spec.entries):
            image = read_image(entry.path)
            coords, tiles = grid_tiles(image, scale, cfg.size, cfg.overlap)
            if not tiles:
                h, w = image.shape[:2]
                raise HistosynthError(
                    f"{entry.path}: {w}x{h} px at {assume_mpp} um/px is smaller than one tile "
                    f"({cfg.size} px at {cfg.mpp} um/px = {cfg.size * scale:.0f} px); lower --size or --mpp")
            start = len(imgs)
            imgs.resize(start + len(tiles), axis=0)
            imgs[start:] = np.stack(tiles)
            masks = [tile_tissue_mask(t, cfg.mpp) for t in tiles]   # tissue_fraction = their means
            for xy, tile, mask in zip(coords, tiles, masks):
                frac = float(mask.mean())
                columns["coords"].append(xy)
                columns["tissue"].append(frac)
                columns["source"].append(entry.source)
                columns["label"].append(entry.label)
                columns["caption"].append(entry.caption)
                columns["case_id"].append(entry.case_id or f"{spec.dataset_id}/{entry.source}")
                if cfg.descriptors:
                    rows.append(describe_one(tile, cfg.mpp, mask))
            if on_tiles is not None:
                on_tiles(n + 1, len(spec.entries))
        dset = f.create_dataset("coords", data=np.asarray(columns["coords"], dtype=np.int64).reshape(-1, 2))
        dset.attrs.update(
            patch_size=cfg.size, patch_level=0, downsample=1.0, mpp=cfg.mpp, level0_mpp=assume_mpp,
            scale=scale, size_level0=cfg.size * scale, overlap=cfg.overlap, min_tissue=0.0,
            mpp_source="assumed", slide_id=spec.dataset_id, case_id=spec.dataset_id, sample_type="",
            slide_type="", source=str(spec.root), n_candidates=len(columns["tissue"]),
            n_read=len(columns["tissue"]), tissue_rule=TISSUE_RULE, kind="tile-dataset",
            n_images=len(spec.entries), fingerprint=spec.fingerprint(),
        )
        f.create_dataset("tissue", data=np.asarray(columns["tissue"], dtype=np.float32))
        strings = h5py.string_dtype()
        for key in ("source", "label", "caption", "case_id"):
            f.create_dataset(f"tile_{key}", data=np.asarray(columns[key], dtype=object), dtype=strings)
        if cfg.descriptors:
            write_descriptors(f, {name: [r[name] for r in rows] for name in DESCRIPTORS})
    tissue = np.asarray(columns["tissue"], dtype=np.float32)
    return {"slide_id": spec.dataset_id, "tiles": len(tissue), "candidates": len(tissue), "images": len(spec.entries),
            "tissue_mean": round(float(tissue.mean()), 4), "level": 0, "level0_mpp": assume_mpp,
            "mpp_source": "assumed", "kind": "tile-dataset"}
