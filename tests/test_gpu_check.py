"""benchmarks/gpu_check.py: its CPU path at toy sizes runs every case and writes the JSON it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["mode"].startswith("tiny") and "Random weights" in result["random_weights"]
    train = {r["name"]: r for r in result["train"]}
    assert set(train) == {"pathldm-154-fp16", "rao-gupta-35-bf16", "rao-gupta-154-bf16"}
    assert train["pathldm-154-fp16"]["context_length"] == 154 and train["pathldm-154-fp16"]["attend_padding"]
    # the 35-token budget gives a context from the template prefix + budget + start/end, well below 154
    assert 37 <= train["rao-gupta-35-bf16"]["context_length"] < 77
    assert train["rao-gupta-154-bf16"]["context_length"] == 154
    assert train["pathldm-154-fp16"]["precision_used"] == "bf16"  # fp16 autocast needs a GPU
    for row in train.values():
        assert row["step_time_s"] > 0 and len(row["step_times_s"]) == 2 and row["losses_finite"]
        assert row["memory_kind"] == "cpu-rss-above-baseline"
    samplers = {r["sampler"]: r for r in result["sampling"]}
    assert samplers["ddim"]["steps"] == 50 and samplers["dpmpp"]["steps"] == 20
    assert all(r["images_per_s"] > 0 for r in samplers.values())
    # fewer steps of the same U-Net: DPM++-20 must be faster than DDIM-50 even at toy sizes
    assert samplers["dpmpp"]["speedup_vs_ddim"] > 1.2


def test_gpu_check_refuses_missing_cuda(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal cannot be shown here")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cuda",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.unit
def test_gpu_check_refuses_missing_cuda_in_process(tmp_path, monkeypatch):
    """The same refusal without a subprocess: CUDA hidden, main() exits naming it and writes nothing."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check_under_test", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--device", "cuda", "--out", str(out)])
    assert not out.exists()
    # the trainer's rule the JSON reports: fp16 autocast needs a GPU, so the CPU runs bf16
    assert gpu_check.effective_precision("fp16", torch.device("cpu")) == "bf16"
    assert gpu_check.effective_precision("fp16", torch.device("cuda")) == "fp16"
