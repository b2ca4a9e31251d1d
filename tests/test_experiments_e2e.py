"""The demo end to end, at smoke scale on the built-in sample (the ablation grid: test_ablate_grid.py)."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image

from histosynth.experiments.demo import run_demo
from histosynth.workspace import Workspace

# A handful of steps everywhere: these tests check the wiring, not the model.
SMOKE = (
    "slides.size=32",
    "vae.steps=10",
    "train.steps=6",
    "train.checkpoint_every=6",
    "train.validation_images=0",
    "sample.steps=4",
)
STAGES = ["sample-data", "tile", "reports", "summarize", "embed", "train-vae", "encode", "train", "sample", "evaluate",
          "sample-prompts"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    html = run_demo(out, overrides=SMOKE, data="sample")
    return out, html


def test_demo_writes_an_honest_report(demo_out):
    out, html = demo_out
    page = html.read_text()
    assert html == out / "report" / "index.html"
    assert "Smoke-scale CPU model" in page
    assert "Real vs generated" in page and "Samples per prompt" in page and "Training loss" in page
    results = json.loads((out / "report" / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == STAGES
    assert all(s["wall_time_s"] >= 0 and s["rss_peak_bytes"] > 0 for s in results["stages"])
    metrics = results["metrics"]
    assert metrics["computed"], "the weight-free metrics are always computed"
    for name in metrics["skipped"]:  # each skipped metric is named in the report with its reason
        assert name in page
    assert len(results["images"]["prompts"]) == 2  # the sample's two distinct texts: IHC and haematoxylin-only
    overview = Image.open(out / "report" / "overview.png")
    assert overview.size[0] >= 800


def test_demo_rerun_skips_finished_stages(demo_out):
    out, html = demo_out
    t0 = time.perf_counter()
    run_demo(out, overrides=SMOKE, data="sample")
    assert time.perf_counter() - t0 < 30
    results = json.loads((out / "report" / "results.json").read_text())
    assert {s["status"] for s in results["stages"]} == {"resumed"}


@pytest.mark.unit
def test_stage_clock_runs_a_stage_once_per_fingerprint(tmp_path):
    """What a demo rerun relies on, without the demo: a finished stage is skipped while the choices are
    the same, and marked changed (not skipped) when they differ."""
    from histosynth.experiments.demo import StageClock

    calls = []
    first = StageClock(tmp_path, ["tiny-cpu", "vae.steps=10"])
    assert first("tile", lambda: calls.append("tile") or 7) == 7
    (record,) = first.records
    assert record["status"] == "ran" and record["wall_time_s"] >= 0 and record["cpu_time_s"] >= 0
    again = StageClock(tmp_path, ["tiny-cpu", "vae.steps=10"])
    assert again("tile", lambda: calls.append("again")) is None and calls == ["tile"]
    assert again.records[0]["status"] == "resumed" and not again.changed("tile")
    other = StageClock(tmp_path, ["tiny-cpu", "vae.steps=20"])
    assert other.changed("tile") and not other.changed("never-ran")
    other("tile", lambda: calls.append("other"))
    assert calls == ["tile", "other"] and other.records[0]["status"] == "ran"
