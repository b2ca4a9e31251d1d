"""Commands of the slides stage: `tile`, `tile-merge` and `describe`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..options import ConfigOpt, PresetOpt, SetOpt, WorkspaceOpt


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """'K/N' -> (K, N), 0 <= K < N (e.g. --shard $SLURM_ARRAY_TASK_ID/N with --array=0-(N-1))."""
    from ..config import ConfigError

    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected K/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= k < n):
        raise ConfigError(f"--shard {text}: need 0 <= K < N")
    return k, n


def tile(
    slides: List[Path] = typer.Argument(..., help="Slides (any format OpenSlide reads), plain PNG/JPEG/TIFF images, "
                                        "folders of them (class sub-folders label tiles), or a CSV path,caption[,case_id]."),
    workspace: Path = WorkspaceOpt,
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: List[str] = SetOpt,
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Target microns per pixel (default: preset's)."),
    size: Optional[int] = typer.Option(None, "--size", help="Tile edge in px at the target mpp."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Pixels shared by neighbouring tiles."),
    min_tissue: Optional[float] = typer.Option(None, "--min-tissue", help="Keep tiles with this tissue share or more."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Slides tiled in parallel (processes)."),
    assume_mpp: Optional[float] = typer.Option(None, "--assume-mpp", help="Level-0 um/px of this run's slides and images that carry no scale (not saved)."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Folder of wsinfer per-slide CSVs to join."),
    sample_types: Optional[str] = typer.Option(None, "--sample-types", help="TCGA sample types to keep: 01 or 01,11."),
    slide_types: Optional[str] = typer.Option(None, "--slide-types", help="TCGA slide types to keep: DX or TS,BS."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: tile only the K-th of N slide subsets (0-based)."),
) -> None:
    """Tile slides into HDF5 tiles + a Parquet index under WS/tiles (resumable)."""
    from ..console import HistosynthError, info
    from ..options import workspace_config
    from .tiler import tile_slides

    from ..config import ConfigError

    flags = {"mpp": mpp, "size": size, "overlap": overlap, "min_tissue": min_tissue, "workers": workers,
             "sample_types": _list(sample_types), "slide_types": _list(slide_types)}
    extra = [f"slides.{k}={v}" for k, v in flags.items() if v is not None]
    if assume_mpp is not None and not (0 < assume_mpp < float("inf")):
        raise ConfigError(f"--assume-mpp {assume_mpp}: must be a positive number of um per pixel")
    ws, cfg = workspace_config(workspace, preset, config, list(overrides) + extra)
    # --assume-mpp is this run's guess, recorded per slide; never saved into the workspace config
    summary = tile_slides(ws, cfg, slides, scores_dir=scores, shard=parse_shard(shard), assume_mpp=assume_mpp)
    info(f"{summary['tiled']} slides tiled ({summary['new_tiles']} tiles), {summary['skipped_finished']} already "
         f"done, {len(summary['failed'])} failed, {len(summary['filtered_out'])} filtered out")
    if summary.get("total_tiles") is not None:
        info(f"{summary['index']}: {summary['total_tiles']} tiles from {summary['index_slides']} slides")
    elif summary["shard"]:
        info("shard done; when all shards are, run `histosynth tile-merge -w WS` to build the index")
    if summary["failed"]:
        names = ", ".join(summary["failed"])
        raise HistosynthError(f"{len(summary['failed'])} of {summary['slides']} slides failed (see above): {names}")


def tile_merge(
    parts: List[Path] = typer.Argument(None, help="Workspaces of other jobs to copy finished slides from."),
    workspace: Path = WorkspaceOpt,
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: List[str] = SetOpt,
) -> None:
    """Join sharded tiling jobs: copy their finished slides in and rebuild WS/tiles/index.parquet."""
    from ..manifest import recording
    from ..options import workspace_config
    from .index import merge_workspaces

    from ..locks import stage_lock

    ws, cfg = workspace_config(workspace, preset, config, overrides)
    with stage_lock(ws.lock_path("tile"), "tile"), \
            recording("tile-merge", ws.tiles_dir, config=cfg, filename="manifest-merge.json") as manifest:
        manifest.results.update(merge_workspaces(ws, cfg, list(parts or [])))


def describe(
    workspace: Path = WorkspaceOpt,
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    overrides: List[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Recompute descriptors of slides that have them."),
) -> None:
    """Patch descriptors (nuclei, H/E, fat, stroma, tissue) for an existing workspace's tiles."""
    from ..console import info
    from ..manifest import recording
    from ..options import workspace_config
    from .describe import describe_workspace

    from ..locks import stage_lock

    ws, cfg = workspace_config(workspace, preset, config, overrides)
    # describe rewrites the slides' files: never beside a tile run (the same lock)
    with stage_lock(ws.lock_path("tile"), "tile"), \
            recording("describe", ws.tiles_dir, config=cfg, filename="manifest-describe.json") as manifest:
        summary = describe_workspace(ws, cfg, force=force)
        manifest.results.update(summary)
    info(f"{summary['described']} slides described ({summary['tiles_described']} tiles); "
         f"{ws.tile_index_path}: {summary['total_tiles']} tiles")


def _list(text: Optional[str]) -> Optional[str]:
    """'01,11' -> '[01, 11]' as a YAML list of strings for --set (so 01 stays '01', not 1)."""
    if text is None:
        return None
    return "[" + ", ".join(f"'{v.strip()}'" for v in text.split(",") if v.strip()) + "]"


def register(app: typer.Typer) -> None:
    app.command("tile")(tile)
    app.command("tile-merge")(tile_merge)
    app.command("describe")(describe)
