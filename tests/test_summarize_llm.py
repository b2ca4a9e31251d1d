"""openai backend against a real HTTP server on 127.0.0.1 speaking the chat-completions protocol."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from histosynth.config import load_config
from histosynth.reports.llm import LLMSummarizer, redact
from histosynth.reports.mockserver import ScriptedServer
from histosynth.tokenizers import load_tokenizer

GOOD = "Invasive ductal carcinoma; Nottingham grade 2; DCIS present."
OVER = "Invasive ductal carcinoma " + "with many more words about it " * 10 + "present."
REPORT = "Patient: Jane Doe. MRN: 12345678. Invasive ductal carcinoma, Nottingham grade 2, with DCIS. CASE:{}"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("minilm")


def summarizer(server, tok, budget=35, **extra):
    cfg = load_config(overrides=[f"summaries.base_url={server.base_url}", "summaries.timeout_s=1",
                                 "summaries.backoff_s=0.05", "summaries.request_retries=3",
                                 "summaries.requests_per_second=100"] + [f"summaries.{k}={v}" for k, v in extra.items()])
    return LLMSummarizer(cfg.summaries, tok, budget)


SCENARIOS = {
    # case: (script, expected status, attempts, HTTP requests, summary check)
    "good": ([("good", GOOD)], "ok", 1, 1, GOOD),
    "over-then-good": ([("good", OVER), ("good", GOOD)], "ok", 2, 2, GOOD),
    "always-over": ([("good", OVER)], "fallback", 3, 3, None),
    "empty": ([("empty",)], "fallback", 3, 3, None),
    "500-then-good": ([("500",), ("good", GOOD)], "ok", 1, 2, GOOD),
    "malformed-then-good": ([("malformed",), ("good", GOOD)], "ok", 1, 2, GOOD),
    "slow-then-good": ([("slow", 2.0, GOOD), ("good", GOOD)], "ok", 1, 2, GOOD),
    "cut-then-good": ([("text", '{"summary": "Invasive ductal carcinoma, moderately differentiated, with micropapillary"}'),
                       ("good", GOOD)], "ok", 2, 2, GOOD),
    "not-json-then-good": ([("text", "Here is the summary: ductal."), ("good", GOOD)], "ok", 2, 2, GOOD),
}


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_scripted_case(case, tok):
    script, status, attempts, requests, expected = SCENARIOS[case]
    with ScriptedServer({case: script}) as server:
        row = summarizer(server, tok).summarize(case, REPORT.format(case))
        assert len(server.calls(case)) == requests
    assert row["status"] == status
    assert row["attempts"] == attempts
    assert row["requests"] == requests
    assert row["n_tokens"] <= 35 and row["summary"].endswith(".")
    if expected:
        assert row["summary"] == expected
    log = json.loads(row["attempt_log"])
    assert sum("attempt" in e for e in log) == attempts  # every attempt recorded
    if case == "over-then-good":
        first = log[0]["problems"][0]
        assert first.endswith("limit 35") and int(first.split()[0]) > 35  # concrete feedback, e.g. "61 tokens, limit 35"
    if status == "fallback":
        assert log[-1]["fallback"] in ("sentences", "extractive")
    assert row["system_fingerprint"] == "fp_scripted"


def test_429_waits_at_least_retry_after(tok):
    with ScriptedServer({"limited": [("429", 1), ("good", GOOD)]}) as server:
        row = summarizer(server, tok).summarize("limited", REPORT.format("limited"))
        first, second = server.calls("limited")
    assert second - first >= 1.0
    assert row["status"] == "ok" and row["attempts"] == 1 and row["requests"] == 2


def test_always_failing_server_falls_back_uncached(tok):
    with ScriptedServer({"down": [("500",)]}) as server:
        row = summarizer(server, tok).summarize("down", REPORT.format("down"))
        assert len(server.calls("down")) == 4  # one request + 3 retries
    assert row["status"] == "error" and row["n_tokens"] <= 35 and "ductal" in row["summary"].lower()


@pytest.mark.unit
def test_paper_prompt_two_turns_capped(tok):
    with ScriptedServer({"paper": [("text", "- ductal carcinoma\n- grade 2"), ("text", GOOD)]}) as server:
        row = summarizer(server, tok, prompt="paper").summarize("paper", REPORT.format("paper"))
        assert len(server.calls("paper")) == 2
    assert row["prompt_version"] == "paper" and row["summary"] == GOOD and row["findings"] == ["ductal carcinoma", "grade 2"]


def test_redaction_only_for_remote_servers(tok, monkeypatch):
    text, counts = redact("Patient: Jane Doe. MRN: 12345678. Seen 03/14/2019, call (555) 123-4567. Grade 2.")
    assert "Jane" not in text and "12345678" not in text and "03/14/2019" not in text and "555" not in text
    assert counts == {"name": 1, "record_number": 1, "date": 1, "phone": 1} and "Grade 2." in text
    with ScriptedServer() as server:
        assert not summarizer(server, tok).redacting  # 127.0.0.1 is local
    cfg = load_config(overrides=["summaries.base_url=https://llm.example.org/v1"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    assert LLMSummarizer(cfg.summaries, tok, 35).redacting


def make_workspace(tmp_path, cases):
    import pandas as pd

    from histosynth.reports.ingest import ingest_reports
    from histosynth.workspace import Workspace

    src = tmp_path / "reports.csv"
    pd.DataFrame({"patient_filename": [f"TCGA-AA-{i:04d}.x" for i in range(len(cases))],
                  "text": [REPORT.format(c) for c in cases]}).to_csv(src, index=False)
    ws = Workspace(tmp_path / "ws")
    cfg = ws.ensure_config()
    ingest_reports(ws, cfg, src)
    return ws


def test_workspace_cache_refresh_regenerate(tmp_path):
    from histosynth.reports.summarize import read_summaries, summarize_workspace

    cases = [f"c{i}" for i in range(4)]
    ws = make_workspace(tmp_path, cases)
    with ScriptedServer() as server:
        cfg = ws.config(overrides=[f"summaries.base_url={server.base_url}", "summaries.requests_per_second=100"])
        table = summarize_workspace(ws, cfg, 35, backend="openai")
        assert len(server.log) == 4 and sorted(table.status) == ["ok"] * 4
        summarize_workspace(ws, cfg, 35, backend="openai")
        assert len(server.log) == 4  # rerun: zero API calls
        summarize_workspace(ws, cfg, 35, backend="openai", regenerate=["TCGA-AA-0001"])
        assert [c for c, _, _ in server.log[4:]] == ["c1"]
        summarize_workspace(ws, cfg, 35, backend="openai", refresh=True)
        assert len(server.log) == 9
    table = read_summaries(ws, 35)
    assert list(table.columns[:11]) == ["case_id", "budget", "summary", "n_tokens", "tokenizer", "backend", "model",
                                        "prompt_version", "attempts", "status", "findings"]
    assert table.case_id.is_unique and set(table.tokenizer) == {"minilm"} and set(table.model) == {"gpt-4o-mini"}


def test_kill9_resume(tmp_path):
    """kill -9 mid-run against a slow server; the rerun completes without repeating finished cases."""
    from histosynth.reports.summarize import read_summaries, summarize_workspace

    cases = [f"k{i}" for i in range(10)]
    ws = make_workspace(tmp_path, cases)
    with ScriptedServer(latency_s=0.3) as server:
        cmd = [sys.executable, "-m", "histosynth.cli", "-q", "summarize", "-w", str(ws.root), "--budget", "35",
               "--backend", "openai", "--base-url", server.base_url, "--concurrency", "2",
               "--set", "summaries.requests_per_second=100"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        db = ws.summaries_dir / "cache.sqlite"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if db.exists() and _cached(db) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = _cached_cases(db)
        assert 3 <= len(finished) < 10
        calls_before = {c: len(server.calls(c)) for c in cases}
        cfg = ws.config(overrides=[f"summaries.base_url={server.base_url}", "summaries.requests_per_second=100"])
        summarize_workspace(ws, cfg, 35, backend="openai")  # the rerun (in-process: a second start costs ~10 s)
    table = read_summaries(ws, 35)
    assert len(table) == 10 and table.case_id.is_unique and set(table.status) == {"ok"}
    for i, case in enumerate(cases):
        if f"TCGA-AA-{i:04d}" in finished:
            assert len(server.calls(case)) == calls_before[case]  # no repeated call for a finished case


def _cached(db) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM summaries").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _cached_cases(db) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT case_id FROM summaries")}
