"""The experiments' own parts, without running any stage: the grid's analysis, plots, HTML report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from histosynth.experiments import ablate, report


def grid_data(shift: float = 0.0, seeds=(0, 1), n: int = 30):
    """Runs and per-image values of three cells: baseline, a shifted one, and a copy of the baseline."""
    import pandas as pd

    cells = [ablate.Cell(35, "minilm", "summary", "full"), ablate.Cell(35, "minilm", "none", "full"),
             ablate.Cell(35, "random-clip", "summary", "full")]
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.01, size=(len(seeds), n))
    runs, images = [], []
    for cell in cells:
        for rank, seed in enumerate(seeds):
            values = base[rank] + (shift if cell.fields == "none" else 0.0) + rng.normal(0, 1e-4, n)
            frame = pd.DataFrame({"index": range(n), "tile_id": range(n), "stain_error": values,
                                  "prompt_margin": values * 10, "cell": cell.name, "seed": seed, "seed_rank": rank})
            images.append(frame)
            runs.append({"cell": cell.name, **cell.axes(), "seed": seed, "seed_rank": rank, "n_images": n,
                         "encoder_kind": "random" if "random" in cell.encoder else "real",
                         "eval:stain.frechet_hed": 0.1 + seed, "eval:fid": math.nan, "stain_error": values.mean(),
                         "prompt_margin": values.mean() * 10, "peak_train_memory_mib": 100.0, "step_time_s": 0.2})
    return cells, pd.DataFrame(runs), pd.concat(images, ignore_index=True)


def test_table_has_mean_sd_over_seeds_and_image_intervals():
    cells, runs, images = grid_data()
    table = ablate.summary_table(runs, images, cells).set_index("cell")
    row = table.loc["b35_minilm_summary_full"]
    assert row["eval:stain.frechet_hed_mean"] == pytest.approx(0.6)
    assert row["eval:stain.frechet_hed_sd"] == pytest.approx(math.sqrt(0.5))
    assert math.isnan(row["eval:fid_mean"])  # a skipped metric stays NaN, never a made-up 0
    assert row["stain_error_ci_lo"] < row["stain_error_mean"] < row["stain_error_ci_hi"]
    assert row["n_seeds"] == 2 and row["n_images"] == 60


def test_comparisons_flag_the_shift_not_the_copy_and_say_so():
    cells, runs, images = grid_data(shift=0.02)
    comparisons = ablate.compare_cells(images, cells, cells[0])
    flagged = set(comparisons.loc[comparisons["outside_noise"], "cell"])
    assert flagged == {"b35_minilm_none_full"}
    judged = comparisons[comparisons["kind"] != "seed-info"]
    assert (judged["p_holm"] >= judged["p"]).all() and (judged["seed_df"] == 3).all()  # 3 cells x (2 - 1) seeds
    assert comparisons.loc[comparisons["kind"] == "seed-info", "p_holm"].isna().all()   # information, no verdict
    encoders = {"minilm": {"kind": "real"}, "random-clip": {"kind": "random"}}
    sentences = ablate.axis_sentences(comparisons, cells, cells[0], encoders)
    assert sentences["fields"].startswith("fields (baseline summary): outside the noise: none")
    assert "no difference outside the noise" in sentences["encoder"] and "no conclusion" in sentences["encoder"]
    table = ablate.summary_table(runs, images, cells)
    page = ablate.markdown(table, comparisons, sentences, cells[0], encoders)
    assert "randomly initialised towers" in page and "Holm" in page and " ± " in page


def test_analysis_writes_tables_and_one_plot_per_axis(tmp_path):
    cells, runs, images = grid_data(shift=0.02)
    frames = [images[(images["cell"] == c.name) & (images["seed"] == s)] for c in cells for s in (0, 1)]
    spec = ablate.GridSpec(fields=["summary", "none"], encoders=["minilm", "random-clip"], seeds=[0, 1])
    encoders = {"minilm": {"kind": "real"}, "random-clip": {"kind": "random"}}
    page = ablate.analyse(runs.to_dict(orient="records"), frames, cells, cells[0], spec, encoders, tmp_path)
    assert page == tmp_path / "table.md"
    for name in ("table.csv", "comparisons.csv", "runs.csv", "per_image.csv", ablate.GRID_FILE):
        assert (tmp_path / name).exists()
    for axis in ("fields", "encoder"):
        assert Image.open(tmp_path / f"axis-{axis}.png").size[0] > 300


def test_set_metrics_flattens_every_numeric_metric():
    scores = {"metrics": {"stain": {"w1_h": 0.1, "frechet_hed": 0.3}, "fid": 12.5, "note": "x",
                          "memorization": {"near_copies": 0, "train": {"n": 5}}}}
    flat = ablate.set_metrics(scores)
    assert flat == {"eval:stain.w1_h": 0.1, "eval:stain.frechet_hed": 0.3, "eval:fid": 12.5,
                    "eval:memorization.near_copies": 0.0, "eval:memorization.train.n": 5.0}


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
