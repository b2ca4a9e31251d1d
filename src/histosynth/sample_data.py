"""The built-in sample: small pyramidal TIFF pseudo-slides and honest reports, made offline.

The tissue is real: scikit-image's `immunohistochemistry()` picture (512 x 512 px, human colon,
FHL2 immunohistochemistry: DAB in brown, haematoxylin counterstain in blue). Three distinct,
non-overlapping regions become three cases, so nothing leaks across the train/test split:

    TCGA-HS-0001  rows 0-255, all columns    IHC (DAB + haematoxylin), as photographed
    TCGA-HS-0002  rows 256-511, cols 0-255   IHC (DAB + haematoxylin), as photographed
    TCGA-HS-0003  rows 256-511, cols 256-511 haematoxylin only, re-rendered after colour deconvolution

Each region sits on a light background margin (as tissue does on glass) and is written as a tiled
TIFF that OpenSlide's generic-TIFF reader opens: level 0 and 2x, 4x reductions as pages of the main
IFD chain, reduced pages flagged `subfiletype=1`, resolution tags in centimetres. scikit-image does
not state the picture's scale; the slides declare a nominal 0.5 um/px, and the reports say so.
The 'TCGA-HS' barcodes are illustrative: 'HS' is no real tissue source site of TCGA.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_path, write_json

NOMINAL_MPP = 0.5      # microns per pixel declared for level 0 (nominal, see module docstring)
MARGIN = 48            # background pixels around the tissue
TIFF_TILE = 128        # TIFF tile edge (a multiple of 16, as TIFF requires)
LEVELS = 3             # level 0 plus two 2x reductions


@dataclass(frozen=True)
class PseudoSlide:
    case_id: str
    rows: slice
    cols: slice
    stain: str           # "ihc" or "haematoxylin"
    report: str


_IHC_REPORT = (
    "ILLUSTRATIVE SAMPLE REPORT - not a patient record; made by histosynth for its built-in sample. "
    "Specimen: colon (scikit-image sample picture, human colonic tissue). "
    "Stain: immunohistochemistry for FHL2 with DAB chromogen (brown) and haematoxylin counterstain (blue). "
    "Microscopic description: colonic mucosa with crypts (glands) cut in cross and oblique section, "
    "lined by columnar epithelium with brown cytoplasmic DAB staining; intervening lamina propria with "
    "blue haematoxylin-stained nuclei. Diagnosis: not applicable (sample image, no clinical diagnosis)."
)
_H_REPORT = (
    "ILLUSTRATIVE SAMPLE REPORT - not a patient record; made by histosynth for its built-in sample. "
    "Specimen: colon (scikit-image sample picture, human colonic tissue). "
    "Stain: haematoxylin only; the DAB signal was removed by colour deconvolution and the haematoxylin "
    "channel re-rendered, so nuclei appear blue and there is no brown staining. "
    "Microscopic description: colonic mucosa with crypts (glands) lined by columnar epithelium; "
    "haematoxylin-stained nuclei in epithelium and lamina propria. "
    "Diagnosis: not applicable (sample image, no clinical diagnosis)."
)

SLIDES = (
    PseudoSlide("TCGA-HS-0001", slice(0, 256), slice(0, 512), "ihc", _IHC_REPORT),
    PseudoSlide("TCGA-HS-0002", slice(256, 512), slice(0, 256), "ihc", _IHC_REPORT),
    PseudoSlide("TCGA-HS-0003", slice(256, 512), slice(256, 512), "haematoxylin", _H_REPORT),
)


def slide_filename(case_id: str) -> str:
    return f"{case_id}-01Z-00-DX1.tiff"  # sample type 01 (primary tumour position), DX slide


def haematoxylin_only(rgb: np.ndarray) -> np.ndarray:
    """Colour-deconvolve (Ruifrok & Johnston, via skimage.color.rgb2hed) and keep haematoxylin."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    hed[..., 1:] = 0.0
    out = hed2rgb(hed)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def on_glass(tissue: np.ndarray, seed: int) -> np.ndarray:
    """Place tissue on a light, slightly noisy background, like a scanned glass slide."""
    rng = np.random.default_rng(seed)
    h, w = tissue.shape[:2]
    canvas = rng.normal(241.0, 2.0, size=(h + 2 * MARGIN, w + 2 * MARGIN, 3))
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    canvas[MARGIN:MARGIN + h, MARGIN:MARGIN + w] = tissue
    return canvas


def pyramid(level0: np.ndarray, levels: int = LEVELS) -> list[np.ndarray]:
    from skimage.transform import downscale_local_mean

    out = [level0]
    for _ in range(levels - 1):
        prev = out[-1].astype(np.float32)
        h, w = (prev.shape[0] // 2) * 2, (prev.shape[1] // 2) * 2
        out.append(np.clip(downscale_local_mean(prev[:h, :w], (2, 2, 1)) + 0.5, 0, 255).astype(np.uint8))
    return out


def write_pyramidal_tiff(path: Path, level0: np.ndarray, mpp: float, tile: int = TIFF_TILE,
                         levels: int = LEVELS, compression: str = "zlib", description: str = "") -> None:
    """A tiled TIFF pyramid in OpenSlide's generic-TIFF layout (see module docstring)."""
    import tifffile

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, img in enumerate(pyramid(level0, levels)):
            px_per_cm = 1e4 / (mpp * 2**i)
            tif.write(
                img,
                photometric="rgb",
                tile=(tile, tile),
                compression=compression,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
            )


def make_sample(out: str | Path) -> dict:
    """Write slides/, reports.csv and README.txt under `out`; returns a summary (idempotent)."""
    from skimage import data

    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    source = data.immunohistochemistry()
    rows = []
    for i, s in enumerate(SLIDES):
        tissue = np.ascontiguousarray(source[s.rows, s.cols])
        if s.stain == "haematoxylin":
            tissue = haematoxylin_only(tissue)
        path = out / "slides" / slide_filename(s.case_id)
        desc = f"histosynth built-in sample {s.case_id}: {s.stain}; nominal {NOMINAL_MPP} um/px"
        write_pyramidal_tiff(path, on_glass(tissue, seed=i), NOMINAL_MPP, description=desc)
        rows.append({"patient_filename": f"{s.case_id}.histosynth-sample", "text": s.report, "patient_id": s.case_id})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["patient_filename", "text", "patient_id"])
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out / "reports.csv") as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(out / "README.txt") as tmp:
        tmp.write_text(__doc__.strip() + "\n")
    summary = {
        "slides": [str(out / "slides" / slide_filename(s.case_id)) for s in SLIDES],
        "reports": str(out / "reports.csv"),
        "mpp": NOMINAL_MPP,
        "source": "skimage.data.immunohistochemistry()",
    }
    write_json(out / "sample.json", summary)
    return summary
