"""The pipeline runner: every stage once, then skipped; a changed input redoes exactly its dependants."""

from __future__ import annotations

import pytest

from histosynth.console import HistosynthError
from histosynth.experiments.runner import STAGES, Pipeline, SampleSpec
from histosynth.workspace import Workspace

SMOKE = ("slides.size=32", "vae.steps=6", "train.steps=4", "train.checkpoint_every=4",
         "train.validation_images=0", "sample.steps=3", "split.seed=1")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runner")
    ws = Workspace(out / "ws")
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=SMOKE)
    pipe = Pipeline(ws, cfg, sample_data=out / "sample")
    records = pipe.run(run_name="smoke", sample=SampleSpec(n=4, out_dir=out / "samples"), eval_dir=out / "eval")
    return out, ws, records


def test_every_stage_runs_in_order_and_records_time_and_memory(first_run):
    out, ws, records = first_run
    assert list(records) == list(STAGES)
    assert all(r.status == "ran" and r.rss_peak_bytes > 0 and r.wall_time_s >= 0 for r in records.values())
    assert (out / "eval" / "eval.json").exists() and len(list((out / "samples").glob("*.png"))) >= 4
    assert ws.pipeline_status_path.exists()


def test_rerun_skips_everything_and_a_changed_vae_redoes_only_its_dependants(first_run):
    out, ws, _ = first_run
    cfg = ws.config(overrides=SMOKE)
    pipe = Pipeline(ws, cfg, sample_data=out / "sample")
    again = pipe.run(run_name="smoke", sample=SampleSpec(n=4, out_dir=out / "samples"), eval_dir=out / "eval")
    assert {r.status for r in again.values()} == {"resumed"}
    before = {s: pipe.fingerprint(s) for s in STAGES}

    changed = Pipeline(ws, ws.config(overrides=[*SMOKE, "vae.steps=7"]), sample_data=out / "sample")
    records = changed.run(stages=["sample-data", "tile", "reports", "summarize", "embed", "train-vae", "encode"],
                          run_name="smoke")
    assert {s for s, r in records.items() if r.status == "ran"} == {"train-vae", "encode"}
    after = {s: changed.fingerprint(s) for s in ("embed", "train")}
    assert after["embed"] == before["embed"] and after["train"] != before["train"]


@pytest.mark.unit
def test_unknown_stage_is_one_line(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(HistosynthError, match="unknown stage"):
        Pipeline(ws, ws.config(preset="tiny-cpu")).run(stages=["tile", "paint"])
