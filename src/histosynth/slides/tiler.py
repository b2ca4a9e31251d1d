"""Slides -> tiles: a grid at the target mpp, tissue-filtered, read in row strips, saved as HDF5.

Per slide: find the scale (reader.py), lay a grid of `size` px tiles at the target mpp over level 0,
score each grid cell's tissue fraction on a low-resolution image (tissue.py), and read only the cells
with at least `min_tissue` tissue, at the coarsest pyramid level that is still at least as fine as
the target. Neighbouring kept tiles of a grid row are read as one region (one OpenSlide call decodes
each TIFF tile once), then cut and resized with antialiasing. Reader threads work on several strips
while the main thread writes; gzip chunks are compressed in those threads too (zlib releases the
GIL, h5py does not), and written with `write_direct_chunk`.

Across slides: a process pool; `shard=(k, n)` keeps every n-th slide from the k-th (cluster arrays).
A finished slide is its `.h5`, renamed into place only when complete, and a `done` unit in the
tiles' status record (histosynth.status, `tiles/status.json`) holding the settings it was tiled
with, so reruns skip it; a killed run leaves only `.tmp-*` files, which the next run of that slide
deletes. A slide tiled by an older histosynth (no status unit) is judged once from its HDF5
attributes and then recorded.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import HistoSynthConfig, SlidesConfig
from ..console import HistosynthError, error, info, make_progress, warn
from ..fileio import atomic_path
from ..manifest import recording
from ..status import WorkLog, inputs_hash
from ..workspace import Workspace
from .reader import SlideMeta, best_level, level0_mpp, open_slide, slide_meta
from .tissue import TISSUE_RULE, tile_fractions, tile_tissue_mask, tissue_mask

MASK_PX_PER_TILE = 16         # tissue-mask pixels along a tile edge (CLAM segments at ~64x downsample)
MAX_MASK_DOWNSAMPLE = 64
QA_THUMBNAIL_PX = 1024        # long side of the QA picture
CANDIDATE_SHARE = 0.5         # read grid cells whose overview tissue is at least this share of min_tissue


@dataclass(frozen=True)
class Grid:
    level: int                # pyramid level read
    downsample: float         # of that level
    scale: float              # level-0 px per tile px (target mpp / level-0 mpp)
    size: int                 # tile edge at the target mpp
    coords: np.ndarray        # [N, 2] int64 level-0 top-left (x, y) of every grid cell
    tissue: np.ndarray        # [N] float32 overview tissue fraction of every grid cell (candidates)

    @property
    def extent0(self) -> float:
        return self.size * self.scale     # tile edge in level-0 px

    @property
    def resize(self) -> bool:
        return abs(self.scale / self.downsample - 1) > 1e-9


# ---- one slide -----------------------------------------------------------------------------------

def read_overview(slide, mpp0: float, cfg: SlidesConfig):
    """One low-resolution RGB picture of the whole slide, fine enough for both the tissue mask and
    the QA thumbnail (reading it is the fixed cost of a slide; single-level slides read it all)."""
    width, height = slide.dimensions
    mask_downsample = np.clip(cfg.size * cfg.mpp / mpp0 / MASK_PX_PER_TILE, 1, MAX_MASK_DOWNSAMPLE)
    qa_downsample = max(width, height) / QA_THUMBNAIL_PX
    downsample = max(1.0, min(mask_downsample, qa_downsample))
    return slide.get_thumbnail((max(1, round(width / downsample)), max(1, round(height / downsample)))).convert("RGB")


def plan_grid(slide, path: Path, cfg: SlidesConfig, overview, mpp0: float) -> Grid:
    """The grid of candidate tiles with their tissue fractions (`overview` from read_overview)."""
    from PIL import Image

    scale = cfg.mpp / mpp0
    level = best_level(slide, scale, cfg.mpp_tolerance)
    downsample = slide.level_downsamples[level]
    if abs(scale / downsample - 1) <= cfg.mpp_tolerance:
        scale = downsample  # close enough: read the level's own pixels, no resampling
    width, height = slide.dimensions
    extent0, step0 = cfg.size * scale, (cfg.size - cfg.overlap) * scale
    if width < extent0 or height < extent0:
        raise HistosynthError(f"{path}: slide ({width}x{height} px) is smaller than one tile "
                              f"({cfg.size} px at {cfg.mpp} um/px = {extent0:.0f} level-0 px)")
    xs = np.round(np.arange(int((width - extent0) // step0) + 1) * step0).astype(np.int64)
    ys = np.round(np.arange(int((height - extent0) // step0) + 1) * step0).astype(np.int64)
    coords = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)   # row-major: y outer, x inner

    mask, fx, fy = overview_mask(overview, (width, height), extent0, mpp0)
    if not mask.any():
        raise HistosynthError(f"{path}: no tissue found (the slide looks blank)")
    boxes = np.concatenate([coords / [fx, fy], (coords + extent0) / [fx, fy]], axis=1)
    return Grid(level, downsample, scale, cfg.size, coords, tile_fractions(mask, boxes))


def overview_mask(overview, dimensions: tuple[int, int], extent0: float, mpp0: float):
    """The slide-level tissue mask at MASK_PX_PER_TILE pixels per tile edge (`extent0`: the tile edge
    in level-0 px); returns (mask, fx, fy), fx/fy level-0 px per mask pixel."""
    from PIL import Image

    width, height = dimensions
    mask_downsample = float(np.clip(extent0 / MASK_PX_PER_TILE, 1, MAX_MASK_DOWNSAMPLE))
    thumb = overview.resize((max(1, round(width / mask_downsample)), max(1, round(height / mask_downsample))),
                            Image.Resampling.BOX) if overview.width * mask_downsample > 1.01 * width else overview
    rgb = np.asarray(thumb.convert("RGB"))
    fx, fy = width / rgb.shape[1], height / rgb.shape[0]
    return tissue_mask(rgb, tile_px=extent0 / fx, mpp=mpp0 * fx), fx, fy


def runs_of(coords: np.ndarray, step0: float) -> list[np.ndarray]:
    """Indices of kept tiles grouped into horizontal runs of grid neighbours (one read each)."""
    runs, current = [], [0]
    for i in range(1, len(coords)):
        same_row = coords[i, 1] == coords[i - 1, 1]
        if same_row and coords[i, 0] - coords[i - 1, 0] <= step0 + 1:
            current.append(i)
        else:
            runs.append(np.array(current))
            current = [i]
    runs.append(np.array(current))
    return runs


@dataclass
class ReadTile:
    payload: object           # pixels, or a zlib chunk
    tissue: float             # tissue fraction of its pixels (tissue.tissue_fraction)
    descriptors: dict | None  # descriptors.describe_one, for kept tiles when asked


def read_run(slide, grid: Grid, coords: np.ndarray, cfg: SlidesConfig, compress: int | None) -> list[ReadTile]:
    """Read one strip of neighbouring tiles; measure each tile's tissue fraction on its pixels and,
    for tiles that pass `min_tissue`, its descriptors; return them with the pixels (or zlib chunks)."""
    from .descriptors import describe_one

    from PIL import Image

    d, extent0 = grid.downsample, grid.extent0
    left, top = int(coords[0, 0]), int(coords[0, 1])
    width = int(np.ceil((coords[-1, 0] - left + extent0) / d)) + 1
    height = int(np.ceil(extent0 / d)) + 1
    rgba = np.asarray(slide.read_region((left, top), grid.level, (width, height)))
    rgb = rgba[..., :3]
    if rgba[..., 3].min() < 255:  # outside the scanned area OpenSlide returns transparent pixels
        rgb = np.where(rgba[..., 3:] == 0, np.uint8(255), rgb)
    strip = None if not grid.resize else Image.fromarray(np.ascontiguousarray(rgb))
    out = []
    for x, _ in coords:
        x_level = (x - left) / d
        if strip is None:
            x_level = int(round(x_level))
            tile = np.ascontiguousarray(rgb[:grid.size, x_level:x_level + grid.size])
        else:  # PIL scales its filter support with the reduction: antialiased
            box = (x_level, 0.0, x_level + extent0 / d, extent0 / d)
            tile = np.asarray(strip.resize((grid.size, grid.size), Image.Resampling.BILINEAR, box=box))
        mask = tile_tissue_mask(tile, cfg.mpp)     # tissue.tissue_fraction(tile) is its mean
        fraction = float(mask.mean())
        desc = describe_one(tile, cfg.mpp, mask) if cfg.descriptors and fraction >= cfg.min_tissue else None
        out.append(ReadTile(zlib.compress(tile.tobytes(), compress) if compress else tile, fraction, desc))
    return out


def strips(slide, grid: Grid, coords: np.ndarray, step0: float, cfg: SlidesConfig, compress: int | None):
    """Yield (first row, tiles) per strip, in order, with up to 2 x `threads` strips in flight."""
    runs = runs_of(coords, step0)
    threads = cfg.threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for run in runs:
            pending.append((run[0], pool.submit(read_run, slide, grid, coords[run], cfg, compress)))
            if len(pending) >= 2 * threads:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def write_slide(out: Path, slide, meta: SlideMeta, grid: Grid, candidates: np.ndarray, cfg: SlidesConfig,
                mpp0: float, mpp_source: str, on_tiles=None) -> np.ndarray:
    """Read the candidate tiles, keep those whose own pixels hold `min_tissue` tissue, and write the
    slide's HDF5 (CLAM layout, docs/architecture.md) to a temp name, renamed when complete. Returns
    the grid indices of the kept tiles. `on_tiles(read, total)` reports progress within the slide."""
    import h5py

    from .descriptors import DESCRIPTORS, write_descriptors

    cand = np.flatnonzero(candidates)
    coords = grid.coords[cand]
    step0 = (cfg.size - cfg.overlap) * grid.scale
    direct = cfg.compression in ("gzip", "none")   # chunks made in the reader threads
    compress = cfg.gzip_level if cfg.compression == "gzip" else None
    for stale in out.parent.glob(f".tmp-{out.stem}-*"):
        stale.unlink(missing_ok=True)               # left by a killed run of this slide
    kept, tissue, rows = [], [], []
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        imgs = f.create_dataset(
            "imgs", shape=(0, cfg.size, cfg.size, 3), maxshape=(None, cfg.size, cfg.size, 3), dtype=np.uint8,
            chunks=(1, cfg.size, cfg.size, 3),
            compression=None if cfg.compression == "none" else cfg.compression,
            compression_opts=cfg.gzip_level if cfg.compression == "gzip" else None,
        )
        for first, tiles in strips(slide, grid, coords, step0, cfg, compress if direct else None):
            for i, tile in enumerate(tiles, start=first):
                if tile.tissue < cfg.min_tissue:
                    continue
                j = len(kept)
                imgs.resize(j + 1, axis=0)
                if direct:
                    imgs.id.write_direct_chunk((j, 0, 0, 0), tile.payload if compress else tile.payload.tobytes())
                else:
                    imgs[j] = tile.payload
                kept.append(cand[i])
                tissue.append(tile.tissue)
                rows.append(tile.descriptors)
            if on_tiles is not None:
                on_tiles(first + len(tiles), len(coords))
        if not kept:
            raise HistosynthError(f"{meta.path}: no tile has at least {cfg.min_tissue:.0%} tissue in its own "
                                  f"pixels ({len(coords)} candidates read of {len(grid.coords)} grid cells)")
        dset = f.create_dataset("coords", data=grid.coords[kept].astype(np.int64))
        dset.attrs.update(
            patch_size=cfg.size, patch_level=grid.level, downsample=grid.downsample,
            level_dim=slide.level_dimensions[grid.level], mpp=cfg.mpp, level0_mpp=mpp0,
            scale=grid.scale, size_level0=grid.extent0, overlap=cfg.overlap, min_tissue=cfg.min_tissue,
            mpp_source=mpp_source, slide_id=meta.slide_id, case_id=meta.case_id,
            sample_type=meta.sample_type or "", slide_type=meta.slide_type or "", source=str(meta.path),
            n_candidates=len(grid.coords), n_read=len(coords), tissue_rule=TISSUE_RULE,
        )
        f.create_dataset("tissue", data=np.asarray(tissue, dtype=np.float32))
        if cfg.descriptors:
            write_descriptors(f, {name: [r[name] for r in rows] for name in DESCRIPTORS})
    return np.asarray(kept, dtype=np.int64)


def save_qa_thumbnail(path: Path, slide, overview, grid: Grid, keep: np.ndarray, meta: SlideMeta) -> None:
    """The slide with its kept tiles outlined in green: the quick visual check of the tiling."""
    from PIL import ImageDraw

    from ..imageio import save_png

    thumb = overview.copy()
    thumb.thumbnail((QA_THUMBNAIL_PX, QA_THUMBNAIL_PX))
    fx, fy = slide.dimensions[0] / thumb.width, slide.dimensions[1] / thumb.height
    draw = ImageDraw.Draw(thumb)
    for x, y in grid.coords[keep]:
        draw.rectangle([x / fx, y / fy, (x + grid.extent0) / fx - 1, (y + grid.extent0) / fy - 1],
                       outline=(0, 200, 0))
    save_png(path, thumb, {"slide_id": meta.slide_id, "kept_tiles": str(int(keep.sum())),
                           "note": "green: kept tiles"})


def tile_slide(meta: SlideMeta, ws_root: str, cfg: SlidesConfig, on_tiles=None) -> dict:
    """Tile one slide into `tiles/slides/<slide_id>.h5`; returns its statistics."""
    ws = Workspace(ws_root)
    slide = open_slide(meta.path)
    try:
        mpp0, mpp_source = level0_mpp(slide, meta.path, cfg.assume_mpp)
        overview = read_overview(slide, mpp0, cfg)
        grid = plan_grid(slide, meta.path, cfg, overview, mpp0)
        candidates = grid.tissue >= cfg.min_tissue * CANDIDATE_SHARE
        if not candidates.any():
            raise HistosynthError(f"{meta.path}: no tile has at least {cfg.min_tissue:.0%} tissue "
                                  f"(best {grid.tissue.max():.0%} of {len(grid.coords)} grid cells)")
        out = ws.slides_dir / f"{meta.slide_id}.h5"
        keep = write_slide(out, slide, meta, grid, candidates, cfg, mpp0, mpp_source, on_tiles)
        save_qa_thumbnail(ws.thumbnails_dir / f"{meta.slide_id}.png", slide, overview, grid, keep, meta)
        tissue = read_tissue(out)
    finally:
        slide.close()
    return {
        "slide_id": meta.slide_id, "tiles": len(keep), "candidates": len(grid.coords),
        "tissue_mean": round(float(tissue.mean()), 4), "level": grid.level,
        "level0_mpp": mpp0, "mpp_source": mpp_source,
    }


def read_tissue(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f["tissue"][:]


def _tile_slide_safely(meta: SlideMeta, ws_root: str, cfg: SlidesConfig, on_tiles=None) -> dict:
    """tile_slide with every failure turned into one line naming the slide (the others go on)."""
    try:
        return tile_slide(meta, ws_root, cfg, on_tiles)
    except HistosynthError as exc:
        return {"slide_id": meta.slide_id, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - truncated files surface as OpenSlide/TIFF errors mid-read
        return {"slide_id": meta.slide_id, "error": f"{meta.path}: {exc.__class__.__name__}: {exc}"}


def _single_threaded_worker() -> None:
    # Slides run in parallel processes: one BLAS/OpenMP/torch thread each, or the cores get
    # oversubscribed (the env vars reach libraries loaded later; torch may come with a fork).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


# ---- many slides ---------------------------------------------------------------------------------

def tile_settings(cfg: SlidesConfig, level0: tuple[float, str] | None, fingerprint: str | None = None) -> dict:
    """What a slide's tiles are made from: the unit inputs of its status record. `level0` is the
    level-0 (mpp, source) as found now (None when it cannot be known now, as for a slide tiled with
    a guessed scale and no --assume-mpp this time); `fingerprint`, a tile dataset's image listing."""
    return {"mpp": cfg.mpp, "size": cfg.size, "overlap": cfg.overlap,
            "min_tissue": None if fingerprint is not None else cfg.min_tissue,  # datasets keep every tile
            "tissue_rule": TISSUE_RULE, "level0_mpp": level0[0] if level0 else None,
            "mpp_source": level0[1] if level0 else None, "fingerprint": fingerprint}


def settings_from_attrs(path: Path) -> dict | None:
    """The settings an older workspace's slide was tiled with, read from its HDF5 (None: unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f["coords"].attrs)
    except (OSError, KeyError):
        return None
    dataset = attrs.get("kind") == "tile-dataset"
    return {"mpp": float(attrs["mpp"]), "size": int(attrs["patch_size"]), "overlap": int(attrs["overlap"]),
            "min_tissue": None if dataset else float(attrs["min_tissue"]),
            "tissue_rule": int(attrs.get("tissue_rule", 1)), "level0_mpp": float(attrs["level0_mpp"]),
            "mpp_source": str(attrs.get("mpp_source", "?")),
            "fingerprint": str(attrs["fingerprint"]) if "fingerprint" in attrs else None}


def effective_settings(current: dict, recorded: dict | None) -> dict:
    """`current` with what cannot be known now (the scale of a slide that has none) taken as recorded."""
    if current["level0_mpp"] is None and recorded is not None:
        return {**current, "level0_mpp": recorded["level0_mpp"], "mpp_source": recorded["mpp_source"]}
    return current


def retile_reason(recorded: dict, current: dict) -> str | None:
    """Why a slide tiled with `recorded` settings must be tiled again with `current` ones, or None:
    same target mpp, tile size, overlap, tissue threshold and rule, same level-0 scale (when known
    now), same dataset listing."""
    changes = []
    if not np.isclose(recorded["mpp"], current["mpp"]) or recorded["size"] != current["size"]:
        changes.append(f"tiles were {recorded['size']} px at {recorded['mpp']:g} um/px, "
                       f"now {current['size']} px at {current['mpp']:g}")
    if recorded["overlap"] != current["overlap"]:
        changes.append(f"overlap {recorded['overlap']} -> {current['overlap']}")
    if None not in (recorded["min_tissue"], current["min_tissue"]) and \
            not np.isclose(recorded["min_tissue"], current["min_tissue"]):
        changes.append(f"min tissue {recorded['min_tissue']:g} -> {current['min_tissue']:g}")
    if recorded["tissue_rule"] != current["tissue_rule"]:
        changes.append("tiled with an older tissue rule")
    if current["level0_mpp"] is not None and not np.isclose(recorded["level0_mpp"], current["level0_mpp"]):
        changes.append(f"scale {recorded['level0_mpp']:g} um/px ({recorded['mpp_source']}) -> "
                       f"{current['level0_mpp']:g} ({current['mpp_source']})")
    if current["fingerprint"] is not None and recorded["fingerprint"] != current["fingerprint"]:
        changes.append("its images changed")
    return "; ".join(changes) or None


def tile_decision(log: WorkLog, ws: Workspace, unit: str, current: dict) -> str | None:
    """None when `unit` is tiled with `current` settings (recorded so), else why it must be tiled now:
    "new", or the change since it was tiled. The status record decides; a slide file without a
    record (tiled by an older histosynth, or killed between rename and record) is judged once from
    its HDF5 attributes and then recorded."""
    path = ws.slide_path(unit)
    if not path.exists():
        return "new"
    status = log.get(unit)
    recorded = status.output.get("settings") if status and status.state == "done" and status.output else None
    if recorded is not None and log.done(unit, inputs_hash(**effective_settings(current, recorded))):
        return None
    recorded = recorded or settings_from_attrs(path)
    if recorded is None:
        return "unreadable tile file"
    reason = retile_reason(recorded, current)
    if reason is None:  # the same settings (an older workspace's slide): record it, so the log decides next time
        mark_tiled(log, ws, unit, effective_settings(current, recorded), tiles=None)
    return reason


def mark_tiled(log: WorkLog, ws: Workspace, unit: str, settings: dict, tiles: int | None) -> None:
    log.mark(unit, inputs_hash(**settings), "done",
             output={"file": str(ws.slide_path(unit).relative_to(ws.root)), "tiles": tiles, "settings": settings})


def record_result(log: WorkLog, ws: Workspace, result: dict, current: dict) -> None:
    """Record one slide's outcome as soon as it is known (a kill -9 loses at most the slide in flight)."""
    unit = result["slide_id"]
    if "error" in result:
        log.mark(unit, inputs_hash(**current), "failed", error=result["error"])
        return
    settings = {**current, "level0_mpp": result["level0_mpp"], "mpp_source": result["mpp_source"]}
    mark_tiled(log, ws, unit, settings, tiles=result["tiles"])


def current_scale(meta: SlideMeta, assume_mpp: float | None) -> tuple[float, str] | None:
    """The slide's level-0 (mpp, source) as this run would use it; None if it has no scale of its
    own and no --assume-mpp was given (an already tiled slide then stays as it is)."""
    try:
        slide = open_slide(meta.path)
    except HistosynthError:
        return None
    try:
        return level0_mpp(slide, meta.path, assume_mpp)
    except HistosynthError:
        return None
    finally:
        slide.close()


def select_slides(paths: list[Path], cfg: SlidesConfig,
                  shard: tuple[int, int] | None) -> tuple[list[SlideMeta], list[str]]:
    """Apply the TCGA sample/slide type filters and the shard; returns (kept, skipped-with-reason)."""
    kept, skipped = [], []
    for path in paths:
        meta = slide_meta(path)
        if cfg.sample_types and meta.sample_type not in cfg.sample_types:
            skipped.append(f"{path.name}: sample type {meta.sample_type} not in {cfg.sample_types}")
        elif cfg.slide_types and meta.slide_type not in cfg.slide_types:
            skipped.append(f"{path.name}: slide type {meta.slide_type} not in {cfg.slide_types}")
        else:
            kept.append(meta)
    if shard is not None:
        k, n = shard
        kept = kept[k::n]
    return kept, skipped


def find_inputs(inputs: list[Path]) -> tuple[list[Path], list]:
    """(slide files, tile datasets) of the inputs: a CSV is a tile dataset with captions; a folder's
    small plain images form one tile dataset (images.py); everything else is a slide."""
    from .images import classify_folder, dataset_from_folder, read_caption_csv
    from .reader import SLIDE_SUFFIXES

    slides: set[Path] = set()
    datasets = []
    for item in map(Path, inputs):
        if item.is_dir():
            found, tiles = classify_folder(item, SLIDE_SUFFIXES)
            slides.update(found)
            if tiles:
                datasets.append(dataset_from_folder(item, tiles))
        elif item.is_file() and item.suffix.lower() == ".csv":
            datasets.append(read_caption_csv(item))
        elif item.exists():
            slides.add(item)
        else:
            raise HistosynthError(f"{item}: no such file or folder")
    if not slides and not datasets:
        raise HistosynthError(f"{', '.join(map(str, inputs))}: no slides or images found "
                              f"(looked for {' '.join(SLIDE_SUFFIXES)} .png .jpg .jpeg, or a tile CSV)")
    ids: dict[str, Path] = {}
    for name, origin in [(p.stem, p) for p in sorted(slides)] + [(d.dataset_id, d.root) for d in datasets]:
        if name in ids:
            raise HistosynthError(f"{origin}: same slide id '{name}' as {ids[name]}; rename one of them")
        ids[name] = origin
    return sorted(slides), datasets


def tile_slides(ws: Workspace, cfg: HistoSynthConfig, slides: list[Path], scores_dir: Path | None = None,
                shard: tuple[int, int] | None = None, assume_mpp: float | None = None) -> dict:
    """Tile slides, plain images and tile datasets (files or folders) into the workspace, then
    rebuild the tile index.

    `assume_mpp` is this run's guess of the level-0 scale of inputs that carry none: it is recorded
    per slide (HDF5 `mpp_source`, index `mpp_source`), never saved into the workspace config. A
    slide whose scale, tile size or target mpp changed since it was tiled is tiled again, and the
    run says why. One `tile` at a time per workspace (an OS lock; a second run names the holder).
    Returns a summary: counts, per-slide statistics, and `failed` ({slide: one-line reason}).
    With `shard=(k, n)` only the k-th of n slide subsets is tiled and the index is left to
    `histosynth tile-merge`, so that parallel jobs never write the same file.
    """
    from ..locks import stage_lock
    from .index import finished_slides, write_index
    from .scores import join_scores

    if cfg.slides.assume_mpp is not None:
        warn(f"slides.assume_mpp={cfg.slides.assume_mpp} in the workspace config is ignored: a guessed "
             "scale applies to one run only; pass --assume-mpp to the run that needs it")
    scfg = cfg.slides.model_copy(update={"assume_mpp": assume_mpp})   # in memory only, never saved
    manifest_name = "manifest.json" if shard is None else f"manifest-shard-{shard[0]}-of-{shard[1]}.json"
    # shards of one array job share the workspace by design (disjoint slides): one lock per shard
    lock = ws.lock_path("tile" if shard is None else f"tile-shard-{shard[0]}-of-{shard[1]}")
    with stage_lock(lock, "tile"), \
            recording("tile", ws.tiles_dir, config=cfg, seeds={"split": cfg.split.seed},
                      filename=manifest_name) as manifest:
        manifest.results["assume_mpp"] = assume_mpp
        slide_paths, datasets = find_inputs(slides)
        metas, filtered = select_slides(slide_paths, scfg, shard)
        if shard is not None:
            datasets = datasets[shard[0]::shard[1]]
        for meta in metas:
            manifest.add_input(meta.path, name=meta.slide_id)  # sha256, or size + ends for big slides
        log = WorkLog(ws.status_path(ws.tiles_dir))
        settings: dict[str, dict] = {}   # slide id -> the settings this run tiles it with
        todo, datasets_todo = [], []
        inputs = [(m, m.slide_id, current_scale(m, assume_mpp), None) for m in metas] + \
                 [(d, d.dataset_id, (assume_mpp, "assumed") if assume_mpp else None, d.fingerprint()) for d in datasets]
        for item, unit, level0, fingerprint in inputs:
            settings[unit] = tile_settings(scfg, level0, fingerprint)
            reason = tile_decision(log, ws, unit, settings[unit])
            if reason is not None:
                (todo if fingerprint is None else datasets_todo).append(item)
                if reason != "new":
                    info(f"{unit}: tiled before with other settings ({reason}): tiling again")
        n_inputs, n_todo = len(metas) + len(datasets), len(todo) + len(datasets_todo)
        info(f"{n_inputs} slides/datasets: {n_inputs - n_todo} already tiled, {n_todo} to tile"
             + (f", {len(filtered)} filtered out by sample/slide type" if filtered else ""))
        def on_result(result: dict) -> None:
            record_result(log, ws, result, settings[result["slide_id"]])

        results = run_slides(todo, ws, scfg, on_result) + run_datasets(datasets_todo, ws, scfg, on_result)
        failed = {r["slide_id"]: r["error"] for r in results if "error" in r}
        tiled = [r for r in results if "error" not in r]
        scored = join_scores(ws, [m for m in metas if m.slide_id not in failed], scores_dir) if scores_dir else 0
        summary = {
            "slides": n_inputs, "tiled": len(tiled), "skipped_finished": n_inputs - n_todo,
            "failed": failed, "filtered_out": filtered, "new_tiles": sum(r["tiles"] for r in tiled),
            "per_slide": tiled, "scored_slides": scored, "shard": list(shard) if shard else None,
        }
        if shard is None and finished_slides(ws):
            index = write_index(ws, cfg)
            summary.update(index=str(ws.tile_index_path), total_tiles=len(index),
                           index_slides=int(index["slide_id"].nunique()))
        manifest.results.update(summary)
    return summary


def run_datasets(todo: list, ws: Workspace, cfg: SlidesConfig, on_result=None) -> list[dict]:
    """Tile datasets, one after the other in this process (each failure: one line, the others go on)."""
    from .images import tile_dataset

    results = []
    for spec in todo:
        try:
            result = tile_dataset(spec, ws.slide_path(spec.dataset_id), cfg, cfg.assume_mpp)
        except HistosynthError as exc:
            result = {"slide_id": spec.dataset_id, "error": str(exc)}
            error(result["error"])
        else:
            info(f"{spec.dataset_id}: {result['tiles']} tiles from {result['images']} images, "
                 f"mean tissue {result['tissue_mean']:.2f}")
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def run_slides(todo: list[SlideMeta], ws: Workspace, cfg: SlidesConfig, on_result=None) -> list[dict]:
    """Tile slides in a process pool (or in this process for one worker), with a progress bar;
    `on_result(result)` runs in this process as each slide finishes (the status record)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[dict] = []
    if not todo:
        return results
    with make_progress() as progress:
        task = progress.add_task("tiling slides", total=len(todo))

        def done(result: dict) -> None:
            results.append(result)
            if "error" in result:
                error(result["error"])
            else:
                info(f"{result['slide_id']}: {result['tiles']} tiles "
                                       f"(of {result['candidates']}), mean tissue {result['tissue_mean']:.2f}")
            if on_result is not None:
                on_result(result)
            progress.advance(task)

        workers = min(cfg.workers, len(todo))
        if workers <= 1:  # in this process: a second bar follows the tiles of the current slide
            tiles_task = progress.add_task("  tiles", total=None)
            for meta in todo:
                progress.reset(tiles_task, total=None, description=f"  {meta.slide_id[:40]}")
                done(_tile_slide_safely(meta, str(ws.root), cfg,
                                        lambda n, total: progress.update(tiles_task, completed=n, total=total)))
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded_worker) as pool:
                futures = [pool.submit(_tile_slide_safely, m, str(ws.root), cfg) for m in todo]
                for future in as_completed(futures):
                    done(future.result())
    return results
