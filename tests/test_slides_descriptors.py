"""Descriptors at tiling time, in the index and the condition text; `histosynth describe`."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from histosynth.slides.descriptors import DESCRIPTORS, column, describe
from histosynth.slides.index import read_index
from histosynth.slides.store import TileStore
from histosynth.slides.tiler import tile_slides
from histosynth.slides.tissue import tissue_fraction
from histosynth.text.condition import context_length_for, score_column, tile_condition_text
from histosynth.workspace import Workspace


@pytest.fixture(scope="module")
def real_ws(tmp_path_factory):
    from conftest import shared_file

    slide = shared_file("slides/CMU-1-Small-Region.svs")
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=["slides.mpp=1.0", "slides.size=128"])
    tile_slides(ws, cfg, [slide])
    return ws, cfg


def test_index_has_descriptors_equal_to_a_fresh_describe(real_ws):
    ws, _ = real_ws
    index = read_index(ws)
    assert all(column(n) in index for n in DESCRIPTORS)
    pixels = TileStore(ws).get(index["tile_id"][:6])
    fresh = describe(pixels, 1.0)
    for name in DESCRIPTORS:
        np.testing.assert_allclose(index[column(name)][:6], fresh[name], rtol=1e-9, equal_nan=True)
    # the recorded tissue fraction IS the tile's pixel tissue fraction, and >= min_tissue
    np.testing.assert_allclose(index["tissue"][:6], tissue_fraction(pixels, 1.0), atol=1e-6)
    assert (index["tissue"] >= 0.5).all()
    assert (index["desc_tissue_fraction"] - index["tissue"]).abs().max() < 1e-6


def test_level_words_in_condition_text(real_ws):
    ws, _ = real_ws
    index = read_index(ws)
    edges = __import__("json").loads(ws.descriptor_edges_path.read_text())
    assert edges["fitted_on"] == "train split" and len(edges["edges"]["nuclei_density"]) == 2
    assert set(index["level_nuclei"]) <= {"low", "medium", "high"} and index["level_nuclei"].nunique() == 3
    template = "{nuclei} nuclei, {fat} fat, {stroma} stroma; {summary}"
    assert score_column("nuclei") == "level_nuclei"
    row = next(index.itertuples())
    text = tile_condition_text(row, template, "IDC grade 2", ["low", "high"])
    assert text == f"{row.level_nuclei} nuclei, {row.level_fat} fat, {row.level_stroma} stroma; IDC grade 2"
    # high density words go with denser tiles
    dens = index.groupby("level_nuclei")["desc_nuclei_density"].median()
    assert dens["low"] < dens["medium"] < dens["high"]

    class Tok:
        max_positions = 77

        def count(self, text):
            return len(text.split())
    assert context_length_for(Tok(), template, 10, ["low", "high"]) == 6 + 10 + 2


def test_describe_command_fills_an_old_workspace(real_ws, tmp_path):
    import shutil

    ws, _ = real_ws
    old = Workspace(tmp_path / "old")
    shutil.copytree(ws.root, old.root)
    for h5 in (old.tiles_dir / "slides").glob("*.h5"):
        with h5py.File(h5, "r+") as f:
            del f["descriptors"]
    from histosynth.slides.index import write_index

    write_index(old, old.ensure_config())
    assert read_index(old)["desc_nuclei_density"].isna().all()
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "describe", "-w", str(old.root)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    new, ref = read_index(old), read_index(ws)
    np.testing.assert_allclose(new["desc_nuclei_density"], ref["desc_nuclei_density"])
    assert (new["level_fat"] == ref["level_fat"]).all()


@pytest.mark.unit
def test_label_and_caption_fields_fill_the_template():
    import pandas as pd

    row = next(pd.DataFrame({"label": ["07_ADIPOSE"], "caption": ["fat, H&E"], "level_nuclei": ["low"]})
               .itertuples())
    assert score_column("label") == "label" and score_column("caption") == "caption"
    assert tile_condition_text(row, "{label}: {caption}; {nuclei} nuclei", "", ["low", "high"]) == \
        "07_ADIPOSE: fat, H&E; low nuclei"
