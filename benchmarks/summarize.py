"""Summaries per second against a scripted OpenAI-compatible server with fixed latency.

Compares, side by side in one run: concurrency 1 vs 8 (each a full run with --refresh) and a
cached rerun of all reports (zero requests). Prints summaries/s and the ratios.

    .venv/bin/python benchmarks/summarize.py [--n 48] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from histosynth.console import set_quiet
from histosynth.reports.ingest import ingest_reports
from histosynth.reports.mockserver import ScriptedServer
from histosynth.reports.summarize import summarize_workspace
from histosynth.workspace import Workspace

REPORT = "Invasive ductal carcinoma, Nottingham grade {g}, with DCIS. No lymphovascular invasion. CASE:b{i}"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="reports")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request (s)")
    args = parser.parse_args()
    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(latency_s=args.latency) as server:
        src = Path(tmp) / "reports.csv"
        pd.DataFrame({"patient_filename": [f"TCGA-BM-{i:04d}" for i in range(args.n)],
                      "text": [REPORT.format(g=1 + i % 3, i=i) for i in range(args.n)]}).to_csv(src, index=False)
        ws = Workspace(Path(tmp) / "ws")
        ingest_reports(ws, ws.ensure_config(), src)

        def run(concurrency: int, refresh: bool):
            cfg = ws.config(overrides=[f"summaries.base_url={server.base_url}", f"summaries.concurrency={concurrency}",
                                       "summaries.requests_per_second=1000"])
            summarize_workspace(ws, cfg, 35, backend="openai", refresh=refresh)

        run(1, refresh=True)  # warm-up: tokenizer and client loaded once, outside the timings
        seconds = {}
        for name, concurrency, refresh in (("concurrency 1", 1, True), ("concurrency 8", 8, True), ("cached rerun", 8, False)):
            before = len(server.log)
            seconds[name] = timed(lambda: run(concurrency, refresh))
            rate = args.n / seconds[name]
            print(f"{name:>14}: {seconds[name]:6.2f} s  {rate:8.1f} summaries/s  {len(server.log) - before:4d} requests")
    print(f"speed-up concurrency 8 / 1: {seconds['concurrency 1'] / seconds['concurrency 8']:.1f}x "
          f"(ideal {min(8, args.n)}x at {args.latency * 1000:.0f} ms latency)")
    print(f"speed-up cached rerun / concurrency 1: {seconds['concurrency 1'] / seconds['cached rerun']:.1f}x")


if __name__ == "__main__":
    main()
