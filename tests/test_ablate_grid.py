"""The ablation grid: statistics, grid parsing, a smoke grid, and the planted checks."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from histosynth.config import ConfigError
from histosynth.experiments import ablate, stats
from histosynth.experiments.runner import Pipeline
from histosynth.workspace import Workspace

SMOKE = ("slides.size=32", "vae.steps=6", "train.steps=4", "train.checkpoint_every=4",
         "train.validation_images=0", "sample.steps=3", "split.seed=1")


# ---- statistics --------------------------------------------------------------------------------
@pytest.mark.unit
def test_holm_matches_the_step_down_definition():
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


@pytest.mark.unit
def test_wilcoxon_flags_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    assert stats.wilcoxon_paired(a + 1.0, a)["p"] < 1e-6
    assert stats.wilcoxon_paired(a + rng.normal(scale=0.1, size=40), a)["p"] > 0.05
    assert stats.wilcoxon_paired(a, a)["p"] == 1.0  # identical cells: nothing to flag


@pytest.mark.unit
def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(5, 1, 20), rng.normal(5, 1, 2000)
    lo, hi = stats.bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = stats.bootstrap_ci(large)
    assert hi2 - lo2 < (hi - lo) / 4


@pytest.mark.unit
def test_seed_level_test_is_students_t_with_pooled_variance():
    from scipy.stats import ttest_ind

    cell, base = [1.0, 1.4, 1.3], [0.2, 0.5]
    sd, df = stats.pooled_seed_sd({"cell": cell, "base": base})
    result = stats.seed_level_test(cell, base, sd, df)
    reference = ttest_ind(cell, base, equal_var=True)   # two cells: the pooled test is Student's
    assert df == 3 and result["seed_t"] == pytest.approx(reference.statistic)
    assert result["seed_p"] == pytest.approx(reference.pvalue)
    assert stats.pooled_seed_sd({"a": [1.0], "b": [2.0]}) == (pytest.approx(float("nan"), nan_ok=True), 0)


@pytest.mark.unit
def test_outside_noise_needs_both_gates_unless_one_seed():
    assert stats.outside_noise(0.001, 0.01)
    assert not stats.outside_noise(0.001, 0.4)      # images differ, but no more than two seeds do
    assert not stats.outside_noise(0.2, 0.001)
    assert stats.outside_noise(0.001, float("nan"))  # one seed: no training-noise estimate, images decide


def seeded_images(offsets: dict[str, list[float]], n: int = 40, noise: float = 0.01):
    """Per-image values: each (cell, seed) model adds its own offset to a shared per-prompt value."""
    rng = np.random.default_rng(3)
    prompt = rng.normal(0, 1, n)
    frames = []
    for cell, seeds in offsets.items():
        for rank, offset in enumerate(seeds):
            values = prompt + offset + rng.normal(0, noise, n)
            frames.append(pd.DataFrame({"index": range(n), "prompt_margin": values, "stain_error": values,
                                        "cell": cell, "seed": rank, "seed_rank": rank}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.unit
def test_seed_gate_blocks_a_per_image_difference_within_training_noise_and_passes_a_large_one():
    base, noisy, shifted = (ablate.Cell(35, "minilm", f, "full") for f in ("summary", "descriptors", "none"))
    # Seeds move a model by up to 0.6; "descriptors" differs from the baseline only by such seed offsets
    # (per image, paired, it differs clearly), "none" by 3.
    images = seeded_images({base.name: [0.0, 0.6], noisy.name: [0.5, 0.2], shifted.name: [3.0, 3.4]})
    comparisons = ablate.compare_cells(images, [base, noisy, shifted], base).set_index(["cell", "metric"])
    small = comparisons.loc[(noisy.name, "prompt_margin")]
    large = comparisons.loc[(shifted.name, "prompt_margin")]
    assert small["p_holm"] < 0.05 and small["seed_p"] > 0.5 and not small["outside_noise"]
    assert large["p_holm"] < 0.05 and large["seed_p"] < 0.01 and large["outside_noise"]
    assert small["seed_df"] == 3
    info = comparisons[comparisons["kind"] == "seed-info"]
    assert (info["p"] < 0.05).all() and not info["outside_noise"].any()  # two seeds differ, image by image


@pytest.mark.unit
def test_one_seed_judges_on_images_and_says_training_noise_was_not_estimated():
    base, shifted = ablate.Cell(35, "minilm", "summary", "full"), ablate.Cell(35, "minilm", "none", "full")
    images = seeded_images({base.name: [0.0], shifted.name: [0.5]})
    comparisons = ablate.compare_cells(images, [base, shifted], base)
    assert (comparisons["seed_df"] == 0).all() and comparisons["seed_p"].isna().all()
    assert comparisons["outside_noise"].all()
    sentence = ablate.axis_sentences(comparisons, [base, shifted], base, {"minilm": {"kind": "real"}})["fields"]
    assert "training noise not estimated (one seed)" in sentence
    table = ablate.summary_table(pd.DataFrame([{"cell": c.name, **c.axes(), "seed": 0, "encoder_kind": "real",
                                                "n_images": 40, "prompt_margin": 0.0, "stain_error": 0.0}
                                               for c in (base, shifted)]), images, [base, shifted])
    page = ablate.markdown(table, comparisons, {"fields": sentence}, base, {"minilm": {"kind": "real"}})
    assert "n/a (one seed)" in page


@pytest.mark.unit
def test_null_cell_is_the_baseline_with_other_seeds_and_its_verdict_is_reported():
    from histosynth.config import load_config

    spec = ablate.load_grid(None, fields=["summary", "none"], seeds=[0, 1], null_cell=True)
    cells = ablate.grid_cells(spec, load_config(preset="tiny-cpu"))
    base = ablate.baseline_cell(spec, cells)
    cells = ablate.with_null_cell(spec, cells, base)
    null = cells[-1]
    assert null.name == base.name + "_null" and null.seeds(spec.seeds) == [1000, 1001]
    assert {k: v for k, v in null.axes().items() if k != "null"} == base.axes() and null.axes()["null"]
    assert "null" not in base.axes()   # ordinary cells keep their resume keys
    images = seeded_images({base.name: [0.0, 0.6], cells[1].name: [3.0, 3.4], null.name: [0.5, 0.2]})
    comparisons = ablate.compare_cells(images, cells, base)
    assert set(comparisons.loc[comparisons["outside_noise"], "cell"]) == {cells[1].name}
    assert set(comparisons.loc[comparisons["kind"] == "null", "cell"]) == {null.name}
    sentences = ablate.axis_sentences(comparisons, cells, base, {"minilm": {"kind": "real"}})
    assert list(sentences) == ["fields"]   # the null cell is no axis of its own
    assert "a copy of the baseline with other seeds: not flagged" in sentences["fields"]
    with pytest.raises(ConfigError, match="below 1000"):
        ablate.with_null_cell(ablate.load_grid(None, seeds=[1000], null_cell=True), cells[:1], base)


# ---- grid parsing ------------------------------------------------------------------------------
@pytest.mark.unit
def test_grid_from_yaml_with_flags_on_top(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("budgets: [20, 35]\nfields: [summary, mine]\ntemplates: {mine: '{summary} (mine)'}\nseeds: [0, 1]\n")
    spec = ablate.load_grid(path, seeds=[3])
    assert spec.budgets == [20, 35] and spec.seeds == [3] and spec.fields == ["summary", "mine"]
    from histosynth.config import load_config

    cells = ablate.grid_cells(spec, load_config(preset="tiny-cpu"))
    assert [c.name for c in cells][:2] == ["b20_minilm_summary_full", "b20_minilm_mine_full"]


@pytest.mark.parametrize("text, flags, message", [
    ("fields: [summary, nope]\n", {}, "--fields nope: unknown"),
    ("contents: [no-colour]\n", {}, "--contents no-colour: unknown"),
    ("budgets: [20]\nseed: [1]\n", {}, "seed: Extra inputs"),
    ("", {"seeds": [1, 1]}, "each seed once"),
])
@pytest.mark.unit
def test_invalid_grid_is_one_line(tmp_path, text, flags, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ablate.load_grid(path, **flags)


def test_content_ablation_keeps_or_drops_the_named_findings(tmp_path, real_reports):
    from histosynth.config import load_config

    ws = Workspace(tmp_path / "ws")
    cfg = ws.ensure_config(preset="tiny-cpu")
    Pipeline(ws, cfg, reports=real_reports).run(stages=["reports"])
    derived = ablate.content_workspace(ws, "type-only")
    full = ablate.write_content_summaries(ws, ablate.content_workspace(ws, "full-copy"), cfg, 35, "no-grade")
    only = pd.read_parquet(ablate.write_content_summaries(ws, derived, cfg, 35, "type-only"))
    no_grade = pd.read_parquet(full)
    assert (only["n_tokens"] <= 35).all()
    assert only["summary"].str.contains("carcinoma", case=False).mean() > 0.8  # the type is kept ...
    assert not only["summary"].str.contains("grade", case=False).any()          # ... and nothing else
    assert not no_grade["summary"].str.contains(r"\bgrade\b", case=False).any()
    assert load_config(preset="tiny-cpu").summaries.budget == 35


# ---- the smoke grid (CI): 2 encoders x 2 fields x 1 seed, a few steps ---------------------------
@pytest.fixture(scope="module")
def smoke_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    ws = Workspace(out / "ws")
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=SMOKE)
    Pipeline(ws, cfg, sample_data=out / "sample").run(stages=["sample-data", "tile", "reports"])
    spec = ablate.load_grid(None, encoders=["minilm", "random-clip"], fields=["summary", "none"], seeds=[0], n=6)
    t0 = time.perf_counter()
    table = ablate.run_grid(ws, cfg, spec)
    return ws, cfg, spec, table, time.perf_counter() - t0


def test_smoke_grid_table_comparisons_plots_and_honesty(smoke_grid):
    ws, _, _, table, wall = smoke_grid
    print(f"smoke grid wall time: {wall:.0f} s")
    out = ws.ablation_dir
    page = table.read_text()
    assert "randomly initialised towers" in page and "Wilcoxon signed-rank" in page and "Holm" in page
    cells = pd.read_csv(out / "table.csv")
    assert len(cells) == 4 and set(cells["encoder_kind"]) == {"real", "random"}
    assert (cells["peak_train_memory_mib_mean"] > 0).all()
    assert cells["stain_error_ci_lo"].le(cells["stain_error_mean"]).all()
    assert cells["prompt_margin_mean"].notna().all()  # the sample's three reports: three populations
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert len(comparisons) == 3 * len(ablate.PER_IMAGE)  # every non-baseline cell, every per-image metric
    result = json.loads((out / ablate.GRID_FILE).read_text())
    assert set(result["sentences"]) == {"encoder", "fields"}
    assert (out / "axis-encoder.png").exists() and (out / "axis-fields.png").exists()


def test_smoke_grid_rerun_skips_every_cell(smoke_grid):
    ws, cfg, spec, _, _ = smoke_grid
    marker = ws.ablation_dir / "b35_minilm_summary_full" / "seed-0" / ablate.CELL_FILE
    stamp = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    ablate.run_grid(ws, cfg, spec)
    assert marker.stat().st_mtime_ns == stamp
    assert time.perf_counter() - t0 < 60


# ---- planted checks: conditioning disabled is flagged; a copy with other seeds is not -------------
# The conditioning check's data (IHC vs H&E, tests/test_conditioning.py) at its smoke scale.
PLANTED = ("slides.size=32", "vae.steps=300", "vae.batch_size=16", "vae.lr=1e-3", "unet.block_out_channels=[32,64,64]",
           "diffusion.prediction_type=v_prediction", "train.steps=300", "train.batch_size=32", "train.lr=1e-3",
           "train.checkpoint_every=300", "train.validation_images=0", "sample.steps=20", "sample.guidance=3.0",
           "sample.batch_size=48")


# Six trainings (summary / none / the null cell x 2 seeds): 939 s measured with CI's settings (CI=true,
# 2 test threads; load 2-4), passed: none flagged (prompt_margin seed-level p = 0.002, Holm p = 2e-15),
# the null cell not (seed-level p = 0.36, though its images differ: Holm p = 4e-6). Longer than a CI
# test may take (the issue asks the smoke grid of CI), so it runs under HISTOSYNTH_SLOW=1.
@pytest.mark.slow
@pytest.mark.skipif(__import__("os").environ.get("HISTOSYNTH_SLOW") != "1",
                    reason="planted checks: six trainings, about 14 min; HISTOSYNTH_SLOW=1")
def test_planted_checks(tmp_path, real_slide):
    from histosynth.experiments import conditioning

    sources = conditioning.make_sources(tmp_path, real_slide)
    ws, cfg = conditioning.build_workspace(tmp_path / "ws", sources, PLANTED)
    spec = ablate.load_grid(None, fields=["summary", "none"], seeds=[0, 1], split="train", n=48, null_cell=True)
    ablate.run_grid(ws, cfg, spec)
    comparisons = pd.read_csv(ws.ablation_dir / "comparisons.csv")
    print(comparisons[["cell", "metric", "n_pairs", "median_diff", "p_holm", "seed_diff", "seed_t", "seed_df",
                       "seed_p", "outside_noise"]].to_string())
    margin = comparisons[comparisons["metric"] == "prompt_margin"].set_index("cell")
    disabled, null = margin.loc["b35_minilm_none_full"], margin.loc["b35_minilm_summary_full_null"]
    assert disabled["outside_noise"] and disabled["median_diff"] > 0 and disabled["seed_diff"] > 0  # worse without text
    assert disabled["seed_df"] == 3                                   # 3 cells x (2 seeds - 1)
    assert not null["outside_noise"]                                  # the recipe with other seeds: not flagged
    assert not comparisons.loc[comparisons["kind"] == "null", "outside_noise"].any()  # on either metric
    sentence = json.loads((ws.ablation_dir / ablate.GRID_FILE).read_text())["sentences"]["fields"]
    assert "a copy of the baseline with other seeds: not flagged" in sentence


@pytest.mark.parametrize("args, message", [
    (["--fields", "summary,nope"], "--fields nope: unknown"),
    (["--seeds", "x"], "--seeds x: expected a comma-separated list"),
    ([], "tiles/index.parquet: not found"),
])
@pytest.mark.unit
def test_ablate_command_fails_in_one_line_and_writes_nothing(tmp_path, args, message):
    import subprocess
    import sys

    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "histosynth.cli", "ablate", "-w", str(ws), *args],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout
    assert len((proc.stderr + proc.stdout).strip().splitlines()) == 1
    assert not ws.exists()
