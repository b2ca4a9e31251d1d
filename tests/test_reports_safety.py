"""summarize fails loudly and keeps secrets: server down, keys in URLs, bad options, concurrent runs,
duplicate report rows, very long reports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

CLI = [sys.executable, "-m", "histosynth.cli"]
KEY, PASSWORD = "sk-K3YSECRET0042", "PW5ECRETxyz"


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ws(tmp_path, real_reports) -> Path:
    ws = tmp_path / "ws"
    done = run("-q", "reports", str(real_reports), "-w", str(ws), "--preset", "tiny-cpu")
    assert done.returncode == 0, done.stderr
    return ws


def test_server_down_fails_names_cases_and_hides_the_key(ws):
    url = f"http://bob:{PASSWORD}@127.0.0.1:9/v1?api-key={KEY}&deployment=x"  # port 9: nothing listens
    done = run("summarize", "-w", str(ws), "--backend", "openai", "--base-url", url,
               "--set", "summaries.request_retries=0", "--set", "summaries.backoff_s=0",
               "--set", "summaries.requests_per_second=1000", "--budget", "20")
    assert done.returncode == 1
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "52 of 52 case(s) failed" in line[0] and "TCGA-A8-A08B" in line[0]
    table = pd.read_parquet(ws / "summaries" / "budget-20.parquet")
    assert set(table.backend) == {"extractive"} and set(table.model) == {"histosynth-extractive"}
    assert set(table.status) == {"error"} and set(table.requested_model) == {"gpt-4o-mini"}
    manifest = json.loads((ws / "summaries" / "manifest-budget-20.json").read_text())
    assert manifest["status"] == "failed" and len(manifest["results"]["failed_cases"]) == 52
    assert "127.0.0.1:9" in manifest["config"]["summaries"]["base_url"]  # masked, not dropped
    for secret in (KEY, PASSWORD):
        assert secret not in done.stdout + done.stderr
        for path in ws.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"{secret} found in {path}"


@pytest.mark.parametrize("args, expected", [
    (["--budget", "0"], "--budget 0: Input should be greater than or equal to 5"),
    (["--budget", "-5"], "--budget -5: Input should be greater than or equal to 5"),
    (["--budget", "abc"], "'--budget': Input should be a valid integer"),
    (["--concurrency", "0"], "--concurrency 0: Input should be greater than or equal to 1"),
    (["--backend", "gpt"], "--backend gpt: Input should be 'extractive' or 'openai'"),
])
@pytest.mark.unit
def test_bad_options_one_line_exit_2_nothing_written(tmp_path, args, expected):
    ws = tmp_path / "new-ws"
    done = run("summarize", "-w", str(ws), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and expected in done.stderr
    assert not ws.exists()


def test_second_run_names_the_holder(ws):
    from histosynth.workspace import Workspace

    lock = Workspace(ws).lock_path("summarize")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from histosynth.locks import stage_lock\n"
        f"with stage_lock({str(lock)!r}, 'summarize'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = run("summarize", "-w", str(ws))
        assert done.returncode == 1
        assert f"PID {holder.pid}" in done.stderr and done.stderr.strip().count("\n") == 0
        assert not (ws / "summaries" / "budget-35.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run("-q", "summarize", "-w", str(ws)).returncode == 0  # released by the OS when the holder died


def test_duplicate_rows_dropped_with_a_count(tmp_path, real_reports):
    rows = pd.read_csv(real_reports)
    doubled = pd.concat([rows, rows.iloc[:3]], ignore_index=True)
    src = tmp_path / "dups.csv"
    doubled.to_csv(src, index=False)
    done = run("reports", str(src), "-w", str(tmp_path / "ws"), "--preset", "tiny-cpu")
    assert done.returncode == 0, done.stderr
    assert "dropped 3 duplicate report row(s)" in done.stderr
    table = pd.read_parquet(tmp_path / "ws" / "reports" / "reports.parquet")
    first = rows.iloc[0]
    case = table[table.source_id.str.contains(first.patient_filename.split(".")[0], regex=False)].iloc[0]
    assert case.n_reports == 1 and case.text.count(case.text[:200]) == 1


def test_one_megabyte_report_linear_and_capped(tmp_path, real_reports):
    from histosynth.reports.extractive import summarize_report
    from histosynth.tokenizers import load_tokenizer

    texts = pd.read_csv(real_reports).text.tolist()
    big = ""
    while len(big) < 1_000_000:
        big += "\n\n".join(texts)
    big = big[:1_000_000]
    t0 = time.perf_counter()
    summary = summarize_report(big, 35, load_tokenizer("minilm"))
    assert time.perf_counter() - t0 < 5.0  # no cap involved: the finders themselves are linear
    assert summary.status == "ok"
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "TCGA-ZZ-0001.txt").write_text(big)
    assert run("-q", "reports", str(tmp_path / "big"), "-w", str(tmp_path / "ws"), "--preset", "tiny-cpu").returncode == 0
    t0 = time.perf_counter()
    done = run("summarize", "-w", str(tmp_path / "ws"))
    assert done.returncode == 0 and time.perf_counter() - t0 < 10.0
    assert "longer than 200 kB are summarized from their first 200 kB: TCGA-ZZ-0001" in done.stderr
