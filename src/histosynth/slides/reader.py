"""Opening slides with OpenSlide: finding them, their barcode, their scale, the level to read.

Scale comes from the slide: `openslide.mpp-x/-y` (microns per level-0 pixel), else the objective
power (mpp ~ 10 / power: 40x ~ 0.25, 20x ~ 0.5), else the user's `--assume-mpp`. A slide with
none of these fails: guessing a magnification silently would mix scales in one training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..console import HistosynthError
from .barcodes import parse_barcode

# Formats OpenSlide 4 opens (https://openslide.org/formats/); files given by name are always tried.
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".czi", ".dcm")


@dataclass(frozen=True)
class SlideMeta:
    path: Path
    slide_id: str                 # file name without its suffix (wsinfer names its CSVs the same way)
    case_id: str                  # TCGA case id, else the slide id (a non-TCGA slide is its own case)
    sample_type: str | None       # "01" primary tumour, "11" solid normal, ...
    slide_type: str | None        # "DX" FFPE diagnostic, "TS"/"BS" frozen


def slide_meta(path: Path) -> SlideMeta:
    slide_id = path.stem
    barcode = parse_barcode(path.name)
    if barcode is None:
        return SlideMeta(path, slide_id, slide_id, None, None)
    return SlideMeta(path, slide_id, barcode.case_id, barcode.sample_type, barcode.slide_type)


def open_slide(path: Path):
    """OpenSlide for whole-slide images; a plain PNG/JPEG/TIFF (e.g. a strip TIFF) as an ImageSlide."""
    import openslide

    from .images import ImageSlide, image_size

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if path.stat().st_size and image_size(path) is not None:
            return ImageSlide(path)
        raise HistosynthError(f"{path}: {why_unreadable(path)}") from None
    except openslide.OpenSlideError as exc:
        raise HistosynthError(f"{path}: unreadable slide, truncated or corrupt? ({exc})") from None


def why_unreadable(path: Path) -> str:
    """A likelier cause than OpenSlide's 'unsupported format' for the common cases."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):  # TIFF / BigTIFF, the base of most slide formats
        return (f"a TIFF file ({size} bytes) that neither OpenSlide (whole-slide formats) nor tifffile "
                "(plain TIFFs) can read: truncated or corrupt")
    return "not a slide (OpenSlide does not recognise the format)"


def level0_mpp(slide, path: Path, assume_mpp: float | None) -> tuple[float, str]:
    """Microns per level-0 pixel and where the number came from."""
    props = slide.properties
    try:
        mpp_x, mpp_y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        if mpp_x > 0 and mpp_y > 0:
            return (mpp_x + mpp_y) / 2, "openslide.mpp"
    except (KeyError, ValueError):
        pass
    try:
        power = float(props["openslide.objective-power"])
        if power > 0:
            return 10.0 / power, "objective-power"
    except (KeyError, ValueError):
        pass
    if assume_mpp:
        return assume_mpp, "assumed"
    raise HistosynthError(f"{path}: no microns-per-pixel or objective power in the slide's metadata; "
                          "pass --assume-mpp X (um/px of level 0) if you know it")


def best_level(slide, downsample: float, tolerance: float) -> int:
    """The coarsest level not coarser than `downsample` (within `tolerance`, relative)."""
    best = 0
    for level, d in enumerate(slide.level_downsamples):
        if d <= downsample * (1 + tolerance) and d >= slide.level_downsamples[best]:
            best = level
    return best
