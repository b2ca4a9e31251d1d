"""The demo on real H&E (CMU-1 from the data mirror): descriptor text, a region split, and a report
that shows the conditioning at work (per-condition grid, fidelity with its control and reference)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from conftest import shared_file
from histosynth.console import HistosynthError
from histosynth.experiments.demo import run_demo

# Wiring, not quality: coarse small tiles, a few steps, no dihedral cache.
SMOKE = ("slides.mpp=2.0", "slides.size=32", "vae.steps=4", "vae.cache_dihedral=false", "vae.dihedral_check_tiles=0",
         "train.steps=4", "train.checkpoint_every=4", "sample.steps=2")


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory):
    shared_file("slides/CMU-1-Small-Region.svs")  # through the data registry, as the demo reads it
    out = tmp_path_factory.mktemp("demo-real")
    return out, run_demo(out, overrides=SMOKE, data="real")


def test_real_demo_reports_the_conditioning_with_controls(real_demo):
    out, html = real_demo
    page = html.read_text()
    results = json.loads((out / "report" / "results.json").read_text())
    assert "CMU-1-Small-Region.svs" in results["data"]
    assert "Conditioning at work" in page and "control [95% CI]" in page
    figures = results["conditioning"]["figures"]
    spearman = figures["nuclei_density fidelity (Spearman)"]
    assert spearman["ci95"] is not None and spearman["control"]["ci95"] is not None
    assert spearman["reference"]["value"] > 0.5  # real tiles vs their own bins: the attainable maximum
    assert "C2ST AUROC (real test vs generated)" in figures
    assert figures["targets"]["met"] in (True, False)
    rows = {r["metric"] for r in results["conditioning"]["rows"]}
    assert "nuclei_density fidelity (Spearman)" in rows
    assert Image.open(out / "report" / "conditions.png").size[0] >= 800
    assert page.count("data:image/png;base64,") >= 2  # grid and loss curve inlined


def test_real_demo_splits_the_slide_by_region(real_demo):
    out, _ = real_demo
    index = pd.read_parquet(out / "workspace" / "tiles" / "index.parquet")
    test_x, train_x = index.loc[index["split"] == "test", "x"], index.loc[index["split"] == "train", "x"]
    assert len(test_x) and len(train_x) and test_x.min() > train_x.max()  # no tile on both sides
    assert set(index["level_nuclei"].dropna()) <= {"low", "medium", "high"}
    edges = json.loads((out / "workspace" / "tiles" / "descriptor_edges.json").read_text())
    assert edges["n_tiles"] == len(train_x)  # bins fitted on the region's training tiles only


@pytest.mark.unit
def test_real_demo_refuses_without_data(tmp_path, monkeypatch):
    monkeypatch.setattr("histosynth.experiments.demo.real_data", lambda: None)
    with pytest.raises(HistosynthError, match="no real H&E"):
        run_demo(tmp_path / "out", data="real")
    assert not (tmp_path / "out").exists()
