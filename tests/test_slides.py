"""Slides -> tiles: tissue detection, HDF5 + index contracts, resume, bad input, scores, shards."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import openslide
import pandas as pd
import pytest

from histosynth.sample_data import MARGIN, SLIDES, slide_filename, write_pyramidal_tiff
from histosynth.slides.index import read_index
from histosynth.slides.reader import slide_meta
from histosynth.slides.scores import average_overlaps
from histosynth.slides.store import TileStore
from histosynth.slides.tiler import select_slides, tile_slides
from histosynth.workspace import Workspace


def make_ws(root: Path, *overrides: str):
    ws = Workspace(root)
    return ws, ws.ensure_config(preset="tiny-cpu", overrides=list(overrides))


@pytest.fixture(scope="module")
def sample_ws(sample_dir, tmp_path_factory):
    ws, cfg = make_ws(tmp_path_factory.mktemp("ws"))
    summary = tile_slides(ws, cfg, [sample_dir / "slides"])
    return ws, cfg, summary


def test_barcode_filters_and_shards():
    names = ["TCGA-A2-A0CM-01Z-00-DX1.6F1D.svs", "TCGA-A2-A0CM-11A-01-TS1.abc.svs",
             "TCGA-B6-A0RE-01A-01-BS1.x.svs", "CMU-1.svs"]
    meta = slide_meta(Path(names[0]))
    assert (meta.slide_id, meta.case_id, meta.sample_type, meta.slide_type) == \
        ("TCGA-A2-A0CM-01Z-00-DX1.6F1D", "TCGA-A2-A0CM", "01", "DX")
    assert slide_meta(Path("CMU-1.svs")).case_id == "CMU-1"  # a non-TCGA slide is its own case

    _, cfg = make_ws(Path("/nonexistent"), "slides.sample_types=['01']", "slides.slide_types=['DX','BS']")
    kept, skipped = select_slides([Path(n) for n in names], cfg.slides, None)
    assert [m.slide_id for m in kept] == ["TCGA-A2-A0CM-01Z-00-DX1.6F1D", "TCGA-B6-A0RE-01A-01-BS1.x"]
    assert len(skipped) == 2

    _, cfg = make_ws(Path("/nonexistent"))
    shards = [select_slides([Path(n) for n in names], cfg.slides, (k, 3))[0] for k in range(3)]
    assert sorted(m.slide_id for s in shards for m in s) == sorted(Path(n).stem for n in names)


def test_sample_tiles_cover_tissue_not_background(sample_ws):
    ws, cfg, summary = sample_ws
    assert summary["failed"] == {} and summary["tiled"] == 3
    index = read_index(ws)
    size = cfg.slides.size
    for s in SLIDES:
        tiles = index[index["case_id"] == s.case_id]
        h, w = s.rows.stop - s.rows.start, s.cols.stop - s.cols.start
        # The tissue is the rectangle [MARGIN, MARGIN + w) x [MARGIN, MARGIN + h) on glass.
        ox = np.clip(np.minimum(tiles["x"] + size, MARGIN + w) - np.maximum(tiles["x"], MARGIN), 0, None)
        oy = np.clip(np.minimum(tiles["y"] + size, MARGIN + h) - np.maximum(tiles["y"], MARGIN), 0, None)
        assert (ox * oy / size**2 >= 0.5).all(), f"{s.case_id}: a kept tile is mostly glass"
        inside = ((w - (64 - MARGIN)) // size) * ((h - (64 - MARGIN)) // size)  # grid cells fully on tissue
        assert len(tiles) >= inside, f"{s.case_id}: tissue lost ({len(tiles)} tiles < {inside})"
        assert (tiles["tissue"] >= cfg.slides.min_tissue).all()
        assert (ws.tiles_dir / "thumbnails" / f"{tiles['slide_id'].iloc[0]}.png").exists()


def test_hdf5_and_index_contracts(sample_ws):
    ws, cfg, _ = sample_ws
    index = read_index(ws)
    assert list(index.columns[:13]) == ["tile_id", "slide_id", "case_id", "sample_type", "slide_type", "x", "y",
                                        "mpp", "size", "tissue", "file", "row", "split"]
    assert index["tile_id"].tolist() == list(range(len(index)))
    assert set(index["split"]) == {"train", "test"}
    assert index.groupby("case_id")["split"].nunique().max() == 1
    assert (index["sample_type"] == "01").all() and (index["slide_type"] == "DX").all()
    row = index.iloc[-1]
    with h5py.File(ws.root / row["file"], "r") as f:
        attrs = f["coords"].attrs
        assert (attrs["patch_size"], attrs["patch_level"], attrs["mpp"]) == (64, 0, 0.5)
        assert {"downsample", "level_dim", "level0_mpp"} <= set(attrs)
        assert f["coords"].dtype == np.int64 and f["imgs"].chunks == (1, 64, 64, 3)
        assert f["imgs"].compression == "gzip" and f["tissue"].dtype == np.float32
        assert tuple(f["coords"][row["row"]]) == (row["x"], row["y"])
    # Pixels at the native level are the slide's own pixels.
    pixels = TileStore(ws).get([row["tile_id"]])[0]
    slide = openslide.OpenSlide(str(Path(attrs_source(ws, row))))
    expected = np.asarray(slide.read_region((int(row["x"]), int(row["y"])), 0, (64, 64)).convert("RGB"))
    assert np.array_equal(pixels, expected)


def attrs_source(ws, row) -> str:
    with h5py.File(ws.root / row["file"], "r") as f:
        return str(f["coords"].attrs["source"])


def test_rerun_does_no_work(sample_ws, sample_dir):
    ws, cfg, _ = sample_ws
    before = {p: p.stat().st_mtime_ns for p in (ws.tiles_dir / "slides").glob("*.h5")}
    ids = read_index(ws)[["tile_id", "slide_id", "x", "y"]]
    summary = tile_slides(ws, cfg, [sample_dir / "slides"])
    assert summary["tiled"] == 0 and summary["skipped_finished"] == 3
    assert {p: p.stat().st_mtime_ns for p in before} == before
    pd.testing.assert_frame_equal(read_index(ws)[["tile_id", "slide_id", "x", "y"]], ids)


def test_coarser_mpp_reads_a_lower_level_and_resizes(sample_dir, tmp_path):
    path = sample_dir / "slides" / slide_filename(SLIDES[0].case_id)
    slide = openslide.OpenSlide(str(path))
    ws, cfg = make_ws(tmp_path / "a", "slides.mpp=1.0", "slides.size=32")   # = level 1, no resampling
    tile_slides(ws, cfg, [path])
    row = read_index(ws).iloc[3]
    level1 = slide.read_region((int(row["x"]), int(row["y"])), 1, (32, 32)).convert("RGB")
    assert np.array_equal(TileStore(ws).get([row["tile_id"]])[0], np.asarray(level1))

    ws, cfg = make_ws(tmp_path / "b", "slides.mpp=0.75", "slides.size=32")  # 1.5x: level 0 + antialiased resize
    tile_slides(ws, cfg, [path])
    row = read_index(ws).iloc[3]
    with h5py.File(ws.root / row["file"], "r") as f:
        assert f["coords"].attrs["patch_level"] == 0 and f["coords"].attrs["size_level0"] == 48
    region = slide.read_region((int(row["x"]), int(row["y"])), 0, (48, 48)).convert("RGB").resize((32, 32))
    diff = np.abs(TileStore(ws).get([row["tile_id"]])[0].astype(int) - np.asarray(region).astype(int))
    assert diff.mean() < 4


def test_real_slide_at_1_mpp(real_slide, tmp_path):
    ws, cfg = make_ws(tmp_path, "slides.mpp=1.0", "slides.size=128")
    summary = tile_slides(ws, cfg, [real_slide])
    index = read_index(ws)
    assert summary["failed"] == {} and 30 < len(index) < 150   # 0.499 um/px: about a quarter of the grid
    assert index["tissue"].between(0.5, 1.0).all()
    with h5py.File(ws.root / index["file"].iloc[0], "r") as f:
        assert f["coords"].attrs["level0_mpp"] == pytest.approx(0.499)
        assert f["coords"].attrs["size_level0"] == pytest.approx(128 * 1.0 / 0.499)
    tiles = TileStore(ws).get(index["tile_id"][:8])
    assert tiles.shape == (8, 128, 128, 3) and tiles.mean() < 225    # stained tissue, not white glass


def bad_folder(root: Path, real_slide: Path, sample_dir: Path) -> Path:
    root.mkdir()
    good = sample_dir / "slides" / slide_filename(SLIDES[1].case_id)
    shutil.copy(good, root / "good.tiff")
    data = real_slide.read_bytes()
    (root / "truncated.svs").write_bytes(data[: len(data) // 2])
    (root / "notes.svs").write_text("this is a text file, not a slide\n")
    pixels = np.asarray(openslide.OpenSlide(str(good)).read_region((0, 0), 0, (352, 352)).convert("RGB"))
    import tifffile

    tifffile.imwrite(root / "no-mpp.tiff", pixels, tile=(128, 128), photometric="rgb", metadata=None)
    glass = np.full((256, 256, 3), 242, dtype=np.uint8)
    write_pyramidal_tiff(root / "blank.tiff", glass, mpp=0.5, levels=1)
    write_pyramidal_tiff(root / "tiny.tiff", pixels[:48, :48].copy(), mpp=0.5, levels=1, tile=16)
    return root


def test_bad_inputs_fail_clearly_and_others_continue(real_slide, sample_dir, tmp_path, monkeypatch, capsys):
    from histosynth import console
    from histosynth.cli import main

    monkeypatch.setattr(console.console, "width", 1000)  # one line per message, as on a wide terminal
    folder = bad_folder(tmp_path / "mixed", real_slide, sample_dir)
    ws_dir = tmp_path / "ws"
    monkeypatch.setattr(sys, "argv", ["histosynth", "tile", str(folder), "-w", str(ws_dir)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    for name, phrase in [("truncated.svs", "truncated or corrupt"), ("notes.svs", "not a slide"),
                         ("no-mpp.tiff", "--assume-mpp"), ("blank.tiff", "no tissue"),
                         ("tiny.tiff", "smaller than one tile")]:
        assert sum(f"{name}: " in line and phrase in line for line in lines) == 1, name
    assert "5 of 6 slides failed" in lines[-1]
    index = read_index(Workspace(ws_dir))
    assert set(index["slide_id"]) == {"good"} and len(index) > 0

    ws, cfg = make_ws(ws_dir)   # the slide without metadata, with --assume-mpp
    summary = tile_slides(ws, cfg, [folder / "no-mpp.tiff"], assume_mpp=0.5)
    assert summary["failed"] == {} and set(read_index(ws)["slide_id"]) == {"good", "no-mpp"}


def test_killed_run_leaves_nothing_finished(sample_dir, tmp_path, monkeypatch):
    from histosynth.slides import tiler

    path = sample_dir / "slides" / slide_filename(SLIDES[2].case_id)
    ws, cfg = make_ws(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # what a killed run looks like from inside

    monkeypatch.setattr(tiler, "read_run", crash)
    with pytest.raises(KeyboardInterrupt):
        tile_slides(ws, cfg, [path])
    slides_dir = ws.tiles_dir / "slides"
    assert not list(slides_dir.glob("*.h5")) and not list(slides_dir.glob(".tmp-*"))
    (slides_dir / f".tmp-{path.stem}-x.h5").write_bytes(b"partial")  # as a SIGKILL would leave it
    monkeypatch.undo()
    summary = tile_slides(ws, cfg, [path])
    assert summary["tiled"] == 1 and [p.name for p in slides_dir.iterdir()] == [f"{path.stem}.h5"]


def test_scores_average_overlaps():
    tiles = np.array([[0, 0, 64, 64], [64, 0, 128, 64], [1000, 1000, 1064, 1064]], dtype=float)
    patches = np.array([[0, 0, 64, 64], [32, 0, 96, 64], [96, 0, 160, 64]], dtype=float)
    probs = np.array([[0.2], [0.6], [1.0]])
    out = average_overlaps(tiles, patches, probs)
    assert out[0, 0] == pytest.approx((0.2 * 64 + 0.6 * 32) / 96)
    assert out[1, 0] == pytest.approx((0.6 * 32 + 1.0 * 32) / 64)
    assert np.isnan(out[2, 0])


def test_scores_join_into_index_and_persist(sample_dir, tmp_path):
    path = sample_dir / "slides" / slide_filename(SLIDES[0].case_id)
    ws, cfg = make_ws(tmp_path / "ws")
    scores = tmp_path / "scores"
    scores.mkdir()
    # wsinfer-style patches of 128 px at stride 64; tumour probability rises to the right
    xs, ys = np.meshgrid(np.arange(0, 480, 64), np.arange(0, 224, 64))
    pd.DataFrame({"minx": xs.ravel(), "miny": ys.ravel(), "width": 128, "height": 128,
                  "prob_tumor": xs.ravel() / 480, "prob_normal": 1 - xs.ravel() / 480}) \
        .to_csv(scores / f"{path.stem}.csv", index=False)
    tile_slides(ws, cfg, [path], scores_dir=scores)
    index = read_index(ws)
    assert {"prob_tumor", "prob_normal"} <= set(index.columns)
    assert np.allclose(index["prob_tumor"] + index["prob_normal"], 1, atol=1e-5)
    assert index.sort_values("x")["prob_tumor"].is_monotonic_increasing
    tile_slides(ws, cfg, [path])  # a rerun without --scores keeps them
    assert "prob_tumor" in read_index(ws).columns


def test_shards_then_merge_equal_one_run(sample_ws, sample_dir, tmp_path):
    ws_full, _, _ = sample_ws
    parts = []
    for k in range(2):
        ws, cfg = make_ws(tmp_path / f"job{k}")
        summary = tile_slides(ws, cfg, [sample_dir / "slides"], shard=(k, 2))
        assert not ws.tile_index_path.exists() and summary["tiled"] == [2, 1][k]
        parts.append(ws.root)
    from histosynth.slides.index import merge_workspaces

    ws, cfg = make_ws(tmp_path / "merged")
    merge_workspaces(ws, cfg, parts)
    cols = ["tile_id", "slide_id", "x", "y", "tissue"]
    pd.testing.assert_frame_equal(read_index(ws)[cols], read_index(ws_full)[cols])

    shared, cfg = make_ws(tmp_path / "shared")   # array jobs writing into one workspace
    for k in range(2):
        tile_slides(shared, cfg, [sample_dir / "slides"], shard=(k, 2))
    merge_workspaces(shared, cfg, [])
    pd.testing.assert_frame_equal(read_index(shared)[cols], read_index(ws_full)[cols])


def test_shard_flag():
    from histosynth.config import ConfigError
    from histosynth.slides.cli import parse_shard

    assert parse_shard("3/8") == (3, 8) and parse_shard(None) is None
    for bad in ("8/8", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_parallel_workers_match_serial(sample_ws, sample_dir, tmp_path):
    ws_full, _, _ = sample_ws
    ws, cfg = make_ws(tmp_path, "slides.workers=2")
    assert tile_slides(ws, cfg, [sample_dir / "slides"])["tiled"] == 3
    a, b = TileStore(ws), TileStore(ws_full)
    assert len(a) == len(b) and np.array_equal(a.get(range(len(a))), b.get(range(len(b))))


def test_read_index_needs_tiling(tmp_path):
    from histosynth.console import HistosynthError

    with pytest.raises(HistosynthError, match="run histosynth tile first"):
        read_index(tmp_path)


def test_cli_flags_reach_config(sample_dir, tmp_path, monkeypatch):
    from histosynth.cli import main

    path = sample_dir / "slides" / slide_filename(SLIDES[1].case_id)
    ws_dir = tmp_path / "ws"
    monkeypatch.setattr(sys, "argv", ["histosynth", "-q", "tile", str(path), "-w", str(ws_dir), "--size", "32",
                                      "--overlap", "16", "--min-tissue", "0.9", "--sample-types", "01,11"])
    main()  # returns normally on success (errors exit non-zero)
    cfg = Workspace(ws_dir).config()
    assert (cfg.slides.size, cfg.slides.overlap, cfg.slides.min_tissue) == (32, 16, 0.9)
    assert cfg.slides.sample_types == ["01", "11"]
    index = read_index(ws_dir)
    assert (index["tissue"] >= 0.9).all() and set(np.diff(np.unique(index["x"]))) == {16}
    assert os.path.exists(ws_dir / "tiles" / "manifest.json")
