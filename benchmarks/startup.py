"""Start-up cost of a light command: `histosynth summarize` (extractive) on 8 real reports, side by side
with `python -c "import torch"`. Median wall time of >= 5 warm runs each (one unmeasured run first, so
both read from the page cache; runs alternate so both see the same load), the median CPU time (less
sensitive to a shared machine's load) and the peak RSS of the summarize process (ru_maxrss of the child).

    .venv/bin/python benchmarks/startup.py [--runs 7] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REPORTS = Path(os.environ.get("HISTOSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "reports" / "tcga_brca_reports_52.csv"
CLI = [sys.executable, "-m", "histosynth.cli"]


def timed(cmd: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in bytes, CPU seconds) of one child process (its own rusage, via wait4)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {child.returncode}")
    return wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="hs-startup-"))
    try:
        src = tmp / "eight.csv"
        pd.read_csv(REPORTS).head(8).to_csv(src, index=False)
        ws = tmp / "ws"
        subprocess.run(CLI + ["-q", "reports", str(src), "-w", str(ws), "--preset", "tiny-cpu"], check=True)
        summarize = CLI + ["-q", "summarize", "-w", str(ws), "--refresh"]  # --refresh: really summarize each time
        torch = [sys.executable, "-c", "import torch"]
        timed(summarize)
        timed(torch)
        runs_s, runs_t = [], []
        for _ in range(args.runs):  # alternate, so both see the same load on a shared machine
            runs_s.append(timed(summarize))
            runs_t.append(timed(torch))
        walls_s, peaks, cpus_s = zip(*runs_s)
        walls_t, _, cpus_t = zip(*runs_t)
        result = {
            "what": "histosynth summarize (extractive, 8 real TCGA-BRCA reports, --refresh) vs python -c 'import torch'",
            "runs": args.runs,
            "summarize_median_s": round(statistics.median(walls_s), 3),
            "import_torch_median_s": round(statistics.median(walls_t), 3),
            "ratio": round(statistics.median(walls_s) / statistics.median(walls_t), 3),
            "summarize_peak_rss_mb": round(max(peaks) / 2 ** 20, 1),
            "summarize_cpu_median_s": round(statistics.median(cpus_s), 3),
            "import_torch_cpu_median_s": round(statistics.median(cpus_t), 3),
            "cpu_ratio": round(statistics.median(cpus_s) / statistics.median(cpus_t), 3),
            "load_average_1min": os.getloadavg()[0],
            "load_average_1min_before": load_before,
            # with PYTHONDONTWRITEBYTECODE set, histosynth's own modules are compiled on every start
            "bytecode_cache_written": not sys.flags.dont_write_bytecode,
            "targets": {"ratio": "< 0.3", "peak_rss_mb": "< 300"},
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    print(f"ratio {result['ratio']:.2f}x of `import torch` (CPU time {result['cpu_ratio']:.2f}x), "
          f"peak {result['summarize_peak_rss_mb']:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
