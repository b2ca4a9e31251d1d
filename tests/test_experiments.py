"""The experiments' own parts, without running any stage: ablation table, plots, HTML report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from histosynth.experiments import ablate, report


def cell(budget, seed, fid, mem_mib, kid=float("nan")):
    return {"budget": budget, "seed": seed, "mean_tokens": budget * 0.8, "fid": fid, "kid": kid,
            "stain_distance": 0.1 * seed, "memorization": 0.5, "peak_train_memory_mib": mem_mib, "step_time_s": 0.2}


def test_aggregate_mean_and_spread_over_seeds():
    rows = [cell(35, 0, 20.0, 100), cell(35, 1, 22.0, 110), cell(20, 0, 30.0, 90), cell(20, 1, 34.0, 90)]
    table = ablate.aggregate(rows)
    assert list(table["budget"]) == [20, 35]
    t35 = table.set_index("budget").loc[35]
    assert t35["fid_mean"] == pytest.approx(21.0)
    assert t35["fid_sd"] == pytest.approx(math.sqrt(2.0))
    assert t35["peak_train_memory_mib_mean"] == pytest.approx(105)
    assert t35["n_seeds"] == 2
    assert math.isnan(t35["kid_mean"])  # skipped metric stays NaN, never a made-up 0


def test_markdown_table_marks_skipped_metrics_and_spread():
    table = ablate.aggregate([cell(35, 0, 20.0, 100), cell(35, 1, 22.0, 110), cell(154, 0, 25.0, 130)])
    md = ablate.markdown_table(table)
    lines = md.splitlines()
    assert lines[0].startswith("| budget | mean tokens | FID | KID |")
    row35 = next(l for l in lines if l.startswith("| 35 |"))
    assert "21.00 ± 1.41" in row35 and "n/a" in row35
    row154 = next(l for l in lines if l.startswith("| 154 |"))
    assert "25.00" in row154 and "±" not in row154  # one seed: no spread to show


def test_tables_and_plots_written(tmp_path):
    rows = [cell(20, 0, 30.0, 90), cell(35, 0, 20.0, 100)]
    table = ablate.aggregate(rows)
    ablate.write_tables(rows, table, tmp_path)
    paths = ablate.plot_ablation(table, tmp_path)
    assert {p.name for p in paths} == {"metrics_vs_budget.png", "memory_vs_budget.png"}
    for p in paths:
        assert Image.open(p).size[0] > 300
    assert (tmp_path / "table.csv").read_text().startswith("budget,")
    assert "| 20 |" in (tmp_path / "table.md").read_text()


def test_quality_scores_reads_nested_metrics_and_skips():
    scores = {"metrics": {"stain": {"w1_h": 0.1, "frechet_hed": 0.3},
                          "memorization": {"near_copies": 0, "near_copy_share": 0.0}},
              "skipped": {"fid": "no weights", "kid": "no weights"}}
    q = ablate.quality_scores(scores)
    assert q["stain_distance"] == 0.3 and q["memorization"] == 0.0
    assert math.isnan(q["fid"]) and math.isnan(q["kid"])
    q = ablate.quality_scores({"metrics": {"fid": 12.5, "kid": {"kid": 0.01, "kid_std": 0.002}}})
    assert q["fid"] == 12.5 and q["kid"] == 0.01


def test_seed_list():
    assert ablate.seed_list(3) == [0, 1, 2]
    assert ablate.seed_list([5, 7]) == [5, 7]


def _png(path, colour):
    Image.fromarray(np.full((16, 16, 3), colour, np.uint8)).save(path)
    return path


def test_report_is_self_contained_and_honest(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    overview = report.overview_png(tiles, tiles[::-1], tmp_path / "overview.png")
    (tmp_path / "loss.csv").write_text("step,loss\n" + "\n".join(f"{i},{1 / (i + 1)}" for i in range(50)))
    loss = report.plot_loss_curve(tmp_path / "loss.csv", tmp_path / "loss.png")
    results = {
        "title": "histosynth demo", "preset": "tiny-cpu", "smoke": True, "data": "built-in sample",
        "device": "CPU", "total_wall_s": 312.0,
        "stages": [{"name": "tile", "status": "ran", "wall_time_s": 1.5, "rss_peak_bytes": 300 * 2**20,
                    "rss_peak_above_baseline_bytes": 20 * 2**20},
                   {"name": "train", "status": "resumed", "wall_time_s": 150.0, "rss_peak_bytes": 900 * 2**20,
                    "rss_peak_above_baseline_bytes": 400 * 2**20}],
        "metrics": {"computed": {"stain_distance": 0.123456}, "skipped": {"fid": "no Inception weights <found>"}},
        "images": {"overview": overview, "loss_curve": loss,
                   "prompts": [{"prompt": "brown DAB & blue nuclei", "image": _png(tmp_path / "p.png", 120)}]},
    }
    page = report.write_report(results, tmp_path).read_text()
    assert "Smoke-scale CPU model" in page
    assert page.count("data:image/png;base64,") == 3  # every picture inlined: one file to share
    assert "src=\"/" not in page and "src=\"file" not in page
    assert "no Inception weights &lt;found&gt;" in page  # skipped metrics say why, escaped
    assert "0.1235" in page and "brown DAB &amp; blue nuclei" in page
    assert "2.5 min" in page and "resumed" in page and "400 MiB" in page

    results["smoke"] = False
    assert "Smoke-scale" not in report.render_html(results)
