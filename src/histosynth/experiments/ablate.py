"""The token-budget ablation (the paper's experiment): how long should a report summary be?

For each budget: summaries -> embeddings (in this process: cheap, resumable), then for each seed a
training run in its OWN process (so its peak memory is its own, not the sum of everything before),
sampling from the test split's conditions and evaluation against the real test tiles. Each
(budget, seed) cell ends with `WS/ablation/budget-<N>/seed-<s>/result.json`; a rerun skips the
cells that have one. The table (mean and spread over seeds) and plots go to `WS/ablation/`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import HistoSynthConfig, to_yaml
from ..console import HistosynthError, info
from ..fileio import read_json, write_json, write_text
from ..manifest import recording
from ..workspace import Workspace

# Table columns: (column in result.json, heading, format). Mean and spread are over seeds.
COLUMNS = (
    ("mean_tokens", "mean tokens", "{:.1f}"),
    ("fid", "FID", "{:.2f}"),
    ("kid", "KID", "{:.4f}"),
    ("stain_distance", "stain distance", "{:.4f}"),
    ("memorization", "memorization", "{:.3f}"),
    ("peak_train_memory_mib", "peak train memory (MiB)", "{:.0f}"),
    ("step_time_s", "step time (s)", "{:.3f}"),
)
# Where each quality column lives in eval.json's "metrics" (see histosynth.evaluate.run).
QUALITY = {
    "fid": ("fid",),
    "kid": ("kid", "kid"),
    "stain_distance": ("stain", "frechet_hed"),         # Frechet distance of per-image HED mean/std
    "memorization": ("memorization", "near_copy_share"),  # share of generated images that copy a training tile
}


def ablation_dir(ws: Workspace) -> Path:
    return ws.ablation_dir


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """`--seeds 3` means seeds 0, 1, 2; an explicit list is taken as is."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def run_ablation(
    ws: Workspace,
    cfg: HistoSynthConfig,
    budgets: Iterable[int],
    seeds: int | Sequence[int] = 1,
    preset: str | None = None,          # recorded only: `cfg` is already resolved from it
    overrides: Sequence[str] = (),      # recorded only, likewise
    n_samples: int | None = None,       # generated images per cell; None: one per test tile (cfg.evaluate.n caps)
    threads: int | None = None,         # torch threads of each training process; None: this process's
) -> Path:
    """Run (or resume) every (budget, seed) cell, then write the table and plots; returns table.csv."""
    out = ablation_dir(ws)
    budgets, seeds = [int(b) for b in budgets], seed_list(seeds)
    ws.require(ws.tile_index_path, "tile")  # the ablation starts from a tiled workspace with reports
    ws.require(ws.reports_path, "reports")
    # Every training process reads exactly this config (a full dump, merged over the workspace's).
    config_file = out / "histosynth.yaml"
    write_text(config_file, to_yaml(cfg))
    rows = []
    with recording("ablate", out, config=cfg, seeds={f"seed{s}": s for s in seeds}) as manifest:
        manifest.results.update(budgets=budgets, preset=preset, overrides=list(overrides))
        for budget in budgets:
            done = [read_json(p) for s in seeds if (p := cell_dir(ws, budget, s) / "result.json").exists()]
            if len(done) == len(seeds):  # a finished budget needs nothing, not even its summaries
                info(f"budget {budget}: {len(seeds)} seed(s) done before, skipped")
                rows += done
                continue
            mean_tokens = prepare_budget(ws, cfg, budget)
            for seed in seeds:
                rows.append(run_cell(ws, cfg, budget, seed, config_file, mean_tokens, n_samples=n_samples,
                                     threads=threads))
        table = aggregate(rows)
        write_tables(rows, table, out)
        plot_ablation(table, out)
        manifest.results.update(cells=len(rows), table=str(out / "table.csv"))
    info(f"ablation table: {out / 'table.md'}")
    return out / "table.csv"


def prepare_budget(ws: Workspace, cfg: HistoSynthConfig, budget: int) -> float:
    """Summaries and embeddings of one budget (each stage skips work it already did)."""
    from ..reports.summarize import read_summaries, summarize_workspace
    from ..text.embed import embed_workspace

    summarize_workspace(ws, cfg, budget)
    embed_workspace(ws, cfg, budget)
    return float(read_summaries(ws, budget)["n_tokens"].mean())


def cell_dir(ws: Workspace, budget: int, seed: int) -> Path:
    return ablation_dir(ws) / f"budget-{budget}" / f"seed-{seed}"


def run_cell(ws: Workspace, cfg: HistoSynthConfig, budget: int, seed: int, config_file: Path, mean_tokens: float,
             n_samples: int | None = None, threads: int | None = None) -> dict[str, Any]:
    cell = cell_dir(ws, budget, seed)
    result_path = cell / "result.json"
    if result_path.exists():
        info(f"budget {budget}, seed {seed}: done before, skipped")
        return read_json(result_path)

    from ..evaluate.run import evaluate
    from ..sample.generate import sample_run

    run_name = f"ablation-budget-{budget}-seed-{seed}"
    run_dir = ws.run_dir(run_name)
    if not finished_run(run_dir, cfg.train.steps):  # a rerun after sampling failed must not retrain
        train_in_subprocess(ws, config_file, budget, seed, run_name, threads=threads)
    run_results = read_json(run_dir / "manifest.json").get("results", {})
    n = n_samples or test_tile_count(ws, cfg)
    samples = sample_run(run_dir, prompts=None, n=n, from_summaries=True, split="test", seed=seed,
                         out_dir=cell / "samples", workspace=ws.root, budget=budget)
    scores = evaluate(f"{ws.root}:test", samples, cell / "eval", train=f"{ws.root}:train",
                      inception_weights=cfg.evaluate.inception_weights)
    row = {
        "budget": budget,
        "seed": seed,
        "mean_tokens": mean_tokens,
        "run": str(run_dir),
        "n_samples": n,
        **quality_scores(scores),
        "peak_train_memory_mib": run_results.get("peak_memory_bytes", math.nan) / 2**20,
        "memory_kind": run_results.get("memory_kind"),
        "step_time_s": run_results.get("step_time_s", math.nan),
    }
    write_json(result_path, row)
    return row


def quality_scores(scores: dict[str, Any]) -> dict[str, float]:
    """The table's quality numbers from an eval.json; a metric that was skipped is NaN."""
    out = {}
    for name, keys in QUALITY.items():
        value: Any = scores.get("metrics", {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        out[name] = float(value) if isinstance(value, (int, float)) else math.nan
    return out


def test_tile_count(ws: Workspace, cfg: HistoSynthConfig) -> int:
    from ..slides.index import read_index

    index = read_index(ws)
    n = int((index["split"] == "test").sum())
    if n == 0:
        raise HistosynthError(f"{ws.tile_index_path}: no test-split tiles to condition on")
    return min(n, cfg.evaluate.n) if cfg.evaluate.n else n


def finished_run(run_dir: Path, steps: int) -> bool:
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return False
    data = read_json(manifest)
    return data.get("status") == "ok" and data.get("results", {}).get("steps") == steps


def train_in_subprocess(ws: Workspace, config_file: Path, budget: int, seed: int, run_name: str,
                        threads: int | None = None) -> Path:
    """`histosynth train` in a child process: its peak memory is the run's alone; resumes if interrupted."""
    import torch

    threads = threads or torch.get_num_threads()
    # One training process at a time, using this process's share of the cores (no oversubscription).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "histosynth.cli", "--quiet", "train", "--workspace", str(ws.root),
           "--budget", str(budget), "--config", str(config_file), "--name", run_name,
           "--set", f"train.seed={seed}"]
    info(f"budget {budget}, seed {seed}: training in a subprocess ({threads} threads)")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise HistosynthError(f"{ws.run_dir(run_name)}: training failed (exit {proc.returncode}): {tail[0]}")
    return ws.run_dir(run_name)


# ---- table and plots ---------------------------------------------------------------------------
def aggregate(rows: list[dict[str, Any]]):
    """One row per budget: mean and standard deviation over seeds of every column (NaN-aware)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    cols = [c for c, _, _ in COLUMNS if c in df]
    grouped = df.groupby("budget")[cols]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    table["n_seeds"] = df.groupby("budget")["seed"].nunique()
    return table.reset_index().sort_values("budget")


def markdown_table(table) -> str:
    heads = ["budget"] + [h for c, h, _ in COLUMNS if f"{c}_mean" in table] + ["seeds"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, r in table.iterrows():
        cells = [str(int(r["budget"]))]
        for c, _, fmt in COLUMNS:
            if f"{c}_mean" not in table:
                continue
            mean, sd = r[f"{c}_mean"], r[f"{c}_sd"]
            if math.isnan(mean):
                cells.append("n/a")
            elif r["n_seeds"] > 1 and not math.isnan(sd):
                cells.append(f"{fmt.format(mean)} ± {fmt.format(sd)}")
            else:
                cells.append(fmt.format(mean))
        cells.append(str(int(r["n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nMean ± standard deviation over seeds; n/a: metric not computed (see each cell's eval/report.md).\n"


def write_tables(rows: list[dict[str, Any]], table, out: Path) -> None:
    import pandas as pd

    from ..fileio import atomic_path

    with atomic_path(out / "cells.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    with atomic_path(out / "table.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text(out / "table.md", markdown_table(table))


def plot_ablation(table, out: Path) -> list[Path]:
    """metrics_vs_budget.png (the quality metrics that were computed) and memory_vs_budget.png."""
    from .report import _pyplot

    plt = _pyplot()
    paths = []
    quality = [(c, h) for c, h, _ in COLUMNS if c in QUALITY and table[f"{c}_mean"].notna().any()]
    figures = (("metrics_vs_budget.png", quality),
               ("memory_vs_budget.png", [(c, h) for c, h, _ in COLUMNS if c in ("peak_train_memory_mib", "step_time_s")]))
    for name, panels in figures:
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
        for ax, (col, head) in zip(axes[0], panels):
            ax.errorbar(table["budget"], table[f"{col}_mean"], yerr=table[f"{col}_sd"].fillna(0), marker="o", capsize=3)
            ax.set(xlabel="summary budget (tokens)", ylabel=head, xticks=list(table["budget"]))
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)
    return paths
