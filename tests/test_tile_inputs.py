"""`histosynth tile` on tile datasets (class folders, caption CSV) and plain single-level images;
--assume-mpp per run; re-tiling when the scale or grid changed; one tile run per workspace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from histosynth.slides.index import read_index
from histosynth.slides.keys import index_keys
from histosynth.slides.store import TileStore
from histosynth.slides.tiler import tile_slides
from histosynth.workspace import Workspace

from conftest import shared_file


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "histosynth.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def kather_subset(tmp_path_factory) -> Path:
    """Three classes of the real Kather 2016 tiles (150 px TIFFs at 0.495 um/px), two tiles each."""
    src = shared_file("tiles/kather2016_tiles_original")
    out = tmp_path_factory.mktemp("kather") / "kather"
    for cls in ("01_TUMOR", "04_LYMPHO", "08_EMPTY"):
        (out / cls).mkdir(parents=True)
        for p in sorted((src / cls).iterdir())[:2]:
            shutil.copy(p, out / cls / p.name)
    return out


@pytest.fixture(scope="module")
def strip_tiff(tmp_path_factory) -> tuple[Path, Path]:
    """The real CMU-1 slide's pixels re-saved as a plain strip TIFF (no scale, no pyramid)."""
    import openslide
    import tifffile

    svs = shared_file("slides/CMU-1-Small-Region.svs")
    slide = openslide.OpenSlide(str(svs))
    pixels = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    out = tmp_path_factory.mktemp("plain") / "cmu1-strips.tif"
    tifffile.imwrite(out, pixels, photometric="rgb", rowsperstrip=32, compression="zlib")
    return out, svs


def test_class_folders_become_labelled_tiles_split_by_source(kather_subset, tmp_path):
    ws = tmp_path / "ws"
    out = cli("tile", str(kather_subset), "-w", str(ws), "--preset", "tiny-cpu", "--assume-mpp", "0.495",
              "--set", "split.test_fraction=0.5")
    assert out.returncode == 0, out.stderr
    index = read_index(ws)
    # 150 px at 0.495 um/px = 74 um; 64 px tiles at 0.5 um/px = 32 um: a 2 x 2 grid per image
    assert len(index) == 6 * 4 and set(index["slide_id"]) == {"kather"}
    assert sorted(index["label"].unique()) == ["01_TUMOR", "04_LYMPHO", "08_EMPTY"]
    assert (index.groupby("source").size() == 4).all()
    assert len(set(index_keys(index))) == len(index)  # every image's tiles start at (0, 0): keys name the image
    assert (index.groupby("source")["split"].nunique() == 1).all()      # a source image stays on one side
    assert set(index["split"]) == {"train", "test"}
    assert (index["mpp_source"] == "assumed").all() and index["desc_nuclei_density"].notna().all()
    # EMPTY glass is kept (a curated dataset is taken whole) and measured as such
    by_label = index.groupby("label")["tissue"].median()
    assert by_label["08_EMPTY"] < 0.2 < by_label["01_TUMOR"]
    tile = TileStore(ws).get([0])[0]
    assert tile.shape == (64, 64, 3) and tile.std() > 5
    saved = yaml.safe_load(Workspace(ws).config_path.read_text())
    assert saved["slides"].get("assume_mpp") is None                     # the guess was not saved
    out = cli("tile", str(kather_subset), "-w", str(ws), "--assume-mpp", "0.495")
    assert out.returncode == 0 and "1 already tiled, 0 to tile" in out.stderr


def test_caption_csv_gives_captions_and_cases(kather_subset, tmp_path):
    images = sorted(kather_subset.rglob("*.tif"))
    table = tmp_path / "captions.csv"
    table.write_text("path,caption,case_id\n" + "".join(
        f"{os.path.relpath(p, tmp_path)},\"{p.parent.name.split('_')[1].lower()}, H&E\",patient-{i // 2}\n"
        for i, p in enumerate(images)))
    ws = Workspace(tmp_path / "ws")
    summary = tile_slides(ws, ws.ensure_config(preset="tiny-cpu"), [table], assume_mpp=0.495)
    assert summary["failed"] == {}
    index = read_index(ws)
    assert set(index["caption"]) == {"tumor, H&E", "lympho, H&E", "empty, H&E"}
    assert set(index["case_id"]) == {f"patient-{i}" for i in range(3)}
    assert (index.groupby("case_id")["split"].nunique() == 1).all()
    table.write_text("path,caption\nmissing.png,x\n")
    with pytest.raises(Exception, match="line 2: no such image 'missing.png'"):
        tile_slides(ws, ws.ensure_config(), [table], assume_mpp=0.495)


def test_strip_tiff_tiles_like_the_slide_it_came_from(strip_tiff, tmp_path):
    plain, svs = strip_tiff
    out = cli("tile", str(plain), "-w", str(tmp_path / "no-scale"), "--preset", "tiny-cpu")
    assert out.returncode != 0
    lines = [x for x in out.stderr.splitlines() if "cmu1-strips.tif: " in x]
    assert len(lines) == 1 and "--assume-mpp" in lines[0] and "corrupt" not in out.stderr

    results = {}
    for name, path, mpp in (("plain", plain, 0.499), ("svs", svs, None)):
        ws = Workspace(tmp_path / name)
        tile_slides(ws, ws.ensure_config(preset="tiny-cpu", overrides=["slides.mpp=1.0", "slides.size=128"]),
                    [path], assume_mpp=mpp)
        results[name] = (read_index(ws), TileStore(ws))
    (a, store_a), (b, store_b) = results["plain"], results["svs"]
    assert len(a) == len(b) > 20 and (a[["x", "y"]].to_numpy() == b[["x", "y"]].to_numpy()).all()
    assert np.abs(store_a.get(a["tile_id"][:5]).astype(int) - store_b.get(b["tile_id"][:5]).astype(int)).max() <= 1
    assert set(a["mpp_source"]) == {"assumed"} and set(b["mpp_source"]) == {"openslide.mpp"}


def test_changed_scale_or_grid_retiles_and_says_so(strip_tiff, tmp_path):
    plain, _ = strip_tiff
    ws = str(tmp_path / "ws")
    base = ["--preset", "tiny-cpu", "--set", "slides.mpp=1.0", "--set", "slides.size=128"]
    assert cli("tile", str(plain), "-w", ws, *base, "--assume-mpp", "0.5").returncode == 0
    n_half = len(read_index(ws))
    out = cli("tile", str(plain), "-w", ws, "--assume-mpp", "0.5")
    assert out.returncode == 0 and "1 already tiled" in out.stderr
    out = cli("tile", str(plain), "-w", ws)                  # no guess this time: the tiled slide stays
    assert out.returncode == 0 and "1 already tiled" in out.stderr
    out = cli("tile", str(plain), "-w", ws, "--assume-mpp", "0.25")
    assert out.returncode == 0, out.stderr
    assert "scale 0.5 um/px (assumed) -> 0.25 (assumed)" in out.stderr and "tiling again" in out.stderr
    assert len(read_index(ws)) < n_half / 2                  # a quarter of the area per tile count
    out = cli("tile", str(plain), "-w", ws, "--assume-mpp", "0.25", "--size", "64")
    assert "tiles were 128 px at 1 um/px, now 64 px at 1" in out.stderr
    assert yaml.safe_load(Workspace(ws).config_path.read_text())["slides"].get("assume_mpp") is None


def test_second_tile_run_exits_naming_the_holder(strip_tiff, tmp_path):
    from histosynth.locks import stage_lock

    plain, _ = strip_tiff
    ws = Workspace(tmp_path / "ws")
    with stage_lock(ws.lock_path("tile"), "tile"):
        out = cli("tile", str(plain), "-w", str(ws.root), "--preset", "tiny-cpu", "--assume-mpp", "0.5")
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert out.returncode != 0 and len(lines) == 1 and f"PID {os.getpid()}" in lines[0], out.stderr
    assert not ws.slides_dir.exists() or not list(ws.slides_dir.glob("*.h5"))


@pytest.mark.unit
def test_invalid_assume_mpp_is_one_line_exit_2(tmp_path, strip_tiff):
    out = cli("tile", str(strip_tiff[0]), "-w", str(tmp_path / "ws"), "--assume-mpp", "-1")
    assert out.returncode == 2 and "--assume-mpp" in out.stderr and len(out.stderr.strip().splitlines()) == 1
