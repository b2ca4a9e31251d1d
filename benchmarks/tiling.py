"""Tiles per second: `histosynth tile` versus the straightforward loop, side by side in one run.

The straightforward loop is what a researcher writes first: `read_region` at level 0 for every grid
position (resized when the target mpp is coarser), a saturation filter, one PNG per kept tile.
Both use the same slide, tile size, target mpp and tissue threshold; tiles/s counts kept tiles.

Slides: the real CMU-1-Small-Region.svs (single level, 0.499 um/px; well under a second), and a
large pyramidal slide built here: about 20,000 x 20,000 px at 0.499 um/px, 4 levels, JPEG tiles
(as in SVS files), made of mirrored copies of the real slide's tissue (about half glass).

Descriptor throughput (slides/descriptors.py, computed when tiling unless slides.descriptors=false):
the tiling rows compare the loop with histosynth without descriptors (the same work) and show
histosynth with them beside; then `describe` alone on tiles of the real slide per tile size.

Each run also reports its CPU time per kept tile (all threads of this process): on a shared machine
wall time follows the other processes' load, CPU time much less (the loop uses one thread,
histosynth `slides.threads`). The load average is printed beside every row.

    .venv/bin/python benchmarks/tiling.py [--workdir DIR] [--size 256] [--skip-large] [--mpps 0.5,1.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
def real_slide() -> Path:
    """CMU-1-Small-Region.svs through the data registry (HISTOSYNTH_DATA_MIRROR, cache or download)."""
    from histosynth import datasets

    return datasets.fetch(datasets.CMU1)



LARGE_EDGE = 20_000
LARGE_LEVELS = 4
SAT_MIN = 0.07          # the loop's saturation filter: a pixel with HSV saturation above this is tissue


def build_large_slide(path: Path, source: Path | None = None) -> Path:
    """A ~20k x 20k generic-TIFF pyramid (OpenSlide layout, JPEG tiles) tiled with the real tissue."""
    import openslide
    import tifffile
    from PIL import Image

    if path.exists():
        return path
    slide = openslide.OpenSlide(str(source or real_slide()))
    mpp = float(slide.properties["openslide.mpp-x"])
    tissue = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    th, tw = tissue.shape[:2]
    canvas = np.empty((LARGE_EDGE, LARGE_EDGE, 3), dtype=np.uint8)
    for row, y in enumerate(range(0, LARGE_EDGE, th)):
        for col, x in enumerate(range(0, LARGE_EDGE, tw)):
            piece = tissue[:, ::-1] if col % 2 else tissue        # mirrored neighbours: continuous seams
            piece = piece[::-1] if row % 2 else piece
            h, w = min(th, LARGE_EDGE - y), min(tw, LARGE_EDGE - x)
            canvas[y:y + h, x:x + w] = piece[:h, :w]
    levels = [canvas]
    for _ in range(LARGE_LEVELS - 1):
        prev = Image.fromarray(levels[-1])
        levels.append(np.asarray(prev.reduce(2)))
    tmp = path.with_name(".tmp-" + path.name)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, img in enumerate(levels):
            px_per_cm = 1e4 / (mpp * 2**i)
            tif.write(img, photometric="rgb", tile=(256, 256), compression="jpeg", compressionargs={"level": 90},
                      resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
                      subfiletype=0 if i == 0 else 1, metadata=None)
    tmp.rename(path)
    return path


def straightforward_loop(slide_path: Path, mpp: float, size: int, min_tissue: float, out: Path) -> int:
    """The loop most tutorials show: level-0 read per grid cell, filter, save a PNG. Returns kept tiles."""
    import openslide
    from PIL import Image

    slide = openslide.OpenSlide(str(slide_path))
    read = round(size * mpp / float(slide.properties["openslide.mpp-x"]))   # level-0 px per tile
    width, height = slide.dimensions
    out.mkdir(parents=True, exist_ok=True)
    kept = 0
    for y in range(0, height - read + 1, read):
        for x in range(0, width - read + 1, read):
            tile = slide.read_region((x, y), 0, (read, read)).convert("RGB")
            if read != size:
                tile = tile.resize((size, size), Image.Resampling.LANCZOS)
            saturation = np.asarray(tile.convert("HSV"))[..., 1]
            if (saturation > SAT_MIN * 255).mean() < min_tissue:
                continue
            tile.save(out / f"{x}_{y}.png")
            kept += 1
    return kept


def histosynth_tile(slide_path: Path, mpp: float, size: int, min_tissue: float, out: Path,
                    descriptors: bool = False) -> int:
    from histosynth import console
    from histosynth.slides.tiler import tile_slides
    from histosynth.workspace import Workspace

    console.set_quiet(True)
    ws = Workspace(out)
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=[f"slides.mpp={mpp}", f"slides.size={size}",
                                                         f"slides.min_tissue={min_tissue}",
                                                         f"slides.descriptors={str(descriptors).lower()}"])
    summary = tile_slides(ws, cfg, [slide_path])
    if summary["failed"]:
        raise SystemExit(f"histosynth tile failed: {summary['failed']}")
    return summary["total_tiles"]


def compare(name: str, slide_path: Path, mpp: float, size: int, workdir: Path, min_tissue: float = 0.5) -> dict:
    row = {"slide": name, "mpp": mpp}
    def with_descriptors(*args):
        return histosynth_tile(*args, descriptors=True)

    for label, fn in (("loop", straightforward_loop), ("histosynth", histosynth_tile), ("+descriptors", with_descriptors)):
        out = workdir / f"{name}-{mpp}-{label}"
        shutil.rmtree(out, ignore_errors=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        tiles = fn(slide_path, mpp, size, min_tissue, out)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        row[label] = (tiles, seconds, tiles / seconds)
        row[label + " cpu ms/tile"] = 1e3 * cpu / max(tiles, 1)
        shutil.rmtree(out, ignore_errors=True)
    row["ratio"] = row["histosynth"][2] / row["loop"][2]
    row["wall_ratio"] = row["loop"][1] / row["histosynth"][1]  # same grid, whatever each filter keeps
    print(f"{name:<18} {mpp:>4} um/px | loop {row['loop'][0]:>5} tiles {row['loop'][1]:7.1f} s "
          f"{row['loop'][2]:7.1f} tiles/s | histosynth {row['histosynth'][0]:>5} tiles {row['histosynth'][1]:7.1f} s "
          f"{row['histosynth'][2]:7.1f} tiles/s | ratio {row['ratio']:.2f}x (wall time {row['wall_ratio']:.2f}x) | "
          f"with descriptors {row['+descriptors'][2]:7.1f} tiles/s | CPU ms/tile: loop "
          f"{row['loop cpu ms/tile']:.1f}, histosynth {row['histosynth cpu ms/tile']:.1f}, with descriptors "
          f"{row['+descriptors cpu ms/tile']:.1f} | load {load()}", flush=True)
    return row


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def descriptor_throughput(slide_path: Path, sizes=(64, 128, 256), n: int = 64) -> dict[int, float]:
    """Tiles per second of descriptors.describe on `n` tiles of the real slide per tile size."""
    import openslide

    from histosynth.slides.descriptors import describe

    slide = openslide.OpenSlide(str(slide_path))
    region = np.asarray(slide.read_region((900, 1800), 0, (1024, 1024)).convert("RGB"))
    out = {}
    for size in sizes:
        per_row = 1024 // size
        tiles = np.stack([region[(i // per_row) * size % 1024:][:size, (i % per_row) * size:][:, :size]
                          for i in range(n)])
        describe(tiles[:2], 0.5)                                   # warm-up
        t0, cpu0 = time.perf_counter(), time.process_time()
        describe(tiles, 0.5)
        out[size] = n / (time.perf_counter() - t0)
        cpu_ms = 1e3 * (time.process_time() - cpu0) / n
        print(f"descriptors {size:>4} px tiles: {out[size]:7.1f} tiles/s (one thread), {cpu_ms:.1f} CPU ms/tile "
              f"| load {load()}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "histosynth-bench-tiling")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--skip-large", action="store_true", help="only the small real slide")
    parser.add_argument("--mpps", default="0.5,1.0", help="target um/px, comma-separated")
    args = parser.parse_args()
    from histosynth.console import HistosynthError

    try:
        slide = real_slide()
    except HistosynthError as exc:
        raise SystemExit(str(exc)) from None
    args.workdir.mkdir(parents=True, exist_ok=True)
    mpps = [float(m) for m in args.mpps.split(",")]
    print(f"tile {args.size} px, min tissue 0.5; tiles/s = kept tiles / wall time (2 cores, shared); load {load()}")
    for fn in (straightforward_loop, histosynth_tile):  # warm-up: imports and file cache, not measured
        fn(slide, 1.0, args.size, 0.5, args.workdir / "warm-up")
        shutil.rmtree(args.workdir / "warm-up")
    histosynth_tile(slide, 1.0, args.size, 0.5, args.workdir / "warm-up", descriptors=True)
    shutil.rmtree(args.workdir / "warm-up")
    rows = [compare("CMU-1-Small-Region", slide, mpp, args.size, args.workdir) for mpp in mpps]
    if not args.skip_large:
        t0 = time.perf_counter()
        large = build_large_slide(args.workdir / "large-20k.tiff")
        print(f"large slide {large} ({large.stat().st_size / 1e6:.0f} MB) ready in {time.perf_counter() - t0:.0f} s")
        rows += [compare("large-20k-4-levels", large, mpp, args.size, args.workdir) for mpp in mpps]
    descriptor_throughput(slide)
    print("ratios (histosynth / loop, tiles/s): "
          + ", ".join(f"{r['slide']} @ {r['mpp']}: {r['ratio']:.2f}x" for r in rows))


if __name__ == "__main__":
    main()
