"""benchmarks/quality.py: the quick mode runs both real-H&E comparisons end to end and writes the
table, the JSON and the grids; the figures and target checks read eval.json correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_file
from histosynth.experiments.quality import Condition, descriptor_condition, summarize_eval, table_rows

ROOT = Path(__file__).resolve().parents[1]


def _fid(rho, ci, ctrl_ci):
    entry = {"spearman": rho, "spearman_ci95": ci, "bin_accuracy": 0.6, "bin_accuracy_ci95": [0.5, 0.7], "n": 240,
             "chance_bin_accuracy": 1 / 3, "requested_counts": {"low": 80, "medium": 80, "high": 80}}
    return {**entry, "shuffled_control": {**entry, "spearman": 0.0, "spearman_ci95": ctrl_ci}}


def _classes(ci, ctrl_ci):
    score = {"balanced_accuracy": 0.4, "ci95": ci, "n": 240}
    return {"classes": [str(i) for i in range(8)], "chance": 0.125, "generated": score,
            "shuffled_control": {**score, "balanced_accuracy": 0.12, "ci95": ctrl_ci},
            "real_heldout_ceiling": {**score, "balanced_accuracy": 0.8}, "train_on_synthetic_test_on_real": score,
            "train_on_real_test_on_real": score, "confusion_requested_x_predicted": [[0] * 8] * 8}


@pytest.mark.unit
def test_targets_follow_the_issue_rules():
    nuclei = descriptor_condition("nuclei")
    c2st = {"generated": {"auroc": 0.9, "ci95": [0.85, 0.95]}, "real_reference": {"auroc": 0.55, "ci95": [0.45, 0.65]}}
    met = summarize_eval({"metrics": {"fidelity": {"generated": {"nuclei_density": _fid(0.7, [0.55, 0.8], [-0.1, 0.1])}},
                                      "c2st": c2st}}, nuclei)
    assert met["targets"]["met"] is True
    assert met["C2ST AUROC (real test vs generated)"]["reference"]["value"] == 0.55
    low = summarize_eval({"metrics": {"fidelity": {"generated": {"nuclei_density": _fid(0.6, [0.45, 0.7], [-0.1, 0.1])}}}},
                         nuclei)
    assert low["targets"]["met"] is False  # CI lower bound below 0.5
    leaky = summarize_eval({"metrics": {"fidelity": {"generated": {"nuclei_density": _fid(0.7, [0.55, 0.8], [0.05, 0.2])}}}},
                           nuclei)
    assert leaky["targets"]["met"] is False  # the control's CI must contain 0
    classes = Condition("class", "label", [str(i) for i in range(8)])
    assert summarize_eval({"metrics": {"classes": _classes([0.3, 0.5], [0.08, 0.16])}}, classes)["targets"]["met"]
    assert not summarize_eval({"metrics": {"classes": _classes([0.1, 0.5], [0.08, 0.16])}}, classes)["targets"]["met"]
    assert summarize_eval({"metrics": {}}, classes)["targets"]["met"] is None  # no figure: not claimed either way
    rows = table_rows([{"dataset": "kather", "metrics": summarize_eval({"metrics": {"classes": _classes(
        [0.3, 0.5], [0.08, 0.16])}}, classes)}])
    assert rows[0]["generated"] == "0.400 [0.300, 0.500]" and "chance 0.125" in rows[0]["reference"]


def test_quick_benchmark_runs_both_comparisons(tmp_path):
    shared_file("slides/CMU-1-Small-Region.svs")  # through the data registry, as the benchmark reads them
    shared_file("tiles/kather2016_tiles_original")
    shared_file("tiles/kather2016_tiles_tfds_resized224")
    out, work = tmp_path / "quality.json", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--work", str(work),
                           "--out", str(out), "--images", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class fidelity (balanced accuracy)" in proc.stdout and "nuclei_density fidelity" in proc.stdout
    report = json.loads(out.read_text())
    assert report["mode"].startswith("quick") and report["load_average_before"]
    by_name = {d["dataset"]: d for d in report["datasets"]}
    assert set(by_name) == {"cmu1", "kather"}
    cmu, kather = by_name["cmu1"], by_name["kather"]
    assert cmu["split"]["rule"].startswith("x >=") and cmu["tiles"]["test"] > 0
    assert kather["condition"]["column"] == "label" and len(kather["condition"]["values"]) == 8
    for d in (cmu, kather):
        assert d["training"]["steps"] == 4 and d["images_generated"] == 12
        assert {s["name"] for s in d["stages"]} >= {"tile", "train-vae", "train", "sample", "evaluate"}
        assert d["metrics"]["targets"]["met"] in (True, False)
        assert "C2ST AUROC (real test vs generated)" in d["metrics"]
        assert (tmp_path / f"quality-{d['dataset']}.png").exists()
    assert len(report["table"]) >= 6


def _record(name, metrics):
    return {"dataset": name, "title": name, "tiles": {"train": 10, "test": 5}, "metrics": metrics, "grid": "x.png",
            "training": {"steps": 100, "train_cpu_s": 60.0, "train_wall_s": 90.0, "torch_threads": 1},
            "stages": [{"name": "sample", "cpu_time_s": 5.0, "wall_time_s": 6.0}]}


@pytest.mark.unit
def test_combine_keeps_each_runs_conditions(tmp_path):
    """--combine: a whole report and a one-dataset record side by side in one report and README block,
    each dataset with the load and notes of the run that measured it; a dataset twice is refused."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    nuclei, classes = descriptor_condition("nuclei"), Condition("class", "label", [str(i) for i in range(8)])
    cmu = _record("cmu1", summarize_eval({"metrics": {"fidelity": {"generated": {
        "nuclei_density": _fid(0.7, [0.55, 0.8], [-0.1, 0.1])}}}}, nuclei))
    report = {"datasets": [cmu], "measured": "2026-12-02", "load_average_before": [5.1, 4, 3],
              "load_average_after": [6.2, 5, 4], "threads_per_dataset": 1, "wall_s": 10.0}
    kather = {**_record("kather", summarize_eval({"metrics": {"classes": _classes([0.3, 0.5], [0.08, 0.16])}},
                                                 classes)), "run": {"note": "Resumed once."}}
    (tmp_path / "a.json").write_text(json.dumps(report))
    (tmp_path / "b.json").write_text(json.dumps(kather))
    combined = quality.combine([tmp_path / "a.json", tmp_path / "b.json"], "cmd")
    assert [d["dataset"] for d in combined["datasets"]] == ["cmu1", "kather"]
    assert combined["datasets"][0]["run"]["load_average_before"] == [5.1, 4, 3]
    assert {r["dataset"] for r in combined["table"]} == {"cmu1", "kather"}
    text = quality.markdown(combined)
    assert "load average 5.1 before, 6.2 after" in text and "Resumed once." in text
    assert "| cmu1 | nuclei_density fidelity" in text and "| kather | class fidelity" in text
    with pytest.raises(SystemExit, match="appears twice"):
        quality.combine([tmp_path / "b.json", tmp_path / "b.json"], "cmd")
