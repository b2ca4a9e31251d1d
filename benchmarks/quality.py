"""Quality on real H&E, on a CPU: does the tiny preset learn pathology, and does the text steer it?

    python benchmarks/quality.py                 # both datasets (~45+ min of CPU), results/quality.json
    python benchmarks/quality.py --quick         # toy sizes (a test runs it): the code path, not a result
    python benchmarks/quality.py --datasets kather --train-minutes 10

Two comparisons, each a normal histosynth workspace trained with the `tiny-cpu` preset:

  cmu1    OpenSlide's CMU-1-Small-Region.svs (real H&E, CC0) tiled at 0.5 um/px, split by REGION
          (tiles left of a vertical line train, right of it test; one slide is one case, so a case
          split cannot hold anything out), conditioned on patch-descriptor words:
          "{nuclei} nuclei density; {stroma} stroma" (quantile bins of the training tiles).
  kather  the Kather 2016 colorectal tiles (CC BY 4.0; 8 classes, class sub-folders), split by source
          image, conditioned on the class text.

Each: train a VAE, encode, embed, train the U-Net for a fixed budget of CPU time (--train-minutes of
the training process's CPU time, 1 torch thread by default: on an idle core, that many wall minutes;
resumed in chunks from its own checkpoints, so the result equals one run of the steps reached),
then generate >= 200 images, each from the condition text of a random real test tile (its
tile_id recorded, as `sample --from-summaries --split test` does), and evaluate with histosynth's weight-free metrics and their controls:
descriptor fidelity (Spearman of the requested nuclei bin vs the nuclei density measured on the
generated image, 95 % CI; shuffled-prompt control), class fidelity (a classifier trained on real
training tiles predicts the generated images' classes; balanced accuracy with CI; shuffled control;
its held-out real accuracy is the ceiling), and C2ST AUROC (real test vs generated, real train vs
real test beside it). Every stage's wall and CPU time is recorded apart; the machine's load average
is recorded before and after. Results: one printed table, benchmarks/results/quality.json, and
docs/images/quality-<dataset>.png (real vs generated per condition).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
IMAGES = ROOT / "docs" / "images"
# No {fat}: at 0.5 um/px with min_tissue 0.5 nearly every CMU-1 tile has no fat, so its word would be
# the same on every tile (measured: fat_fraction quantile edges [0, 0]) and say nothing.
DESCRIPTOR_TEMPLATE = "{nuclei} nuclei density; {stroma} stroma"
TARGETS = {"cmu1": "nuclei-density fidelity Spearman CI lower bound >= 0.5, shuffled control's CI contains 0",
           "kather": "class fidelity (balanced accuracy) CI lower bound > 0.125, shuffled control's CI contains 0.125"}


@dataclass
class Sizes:
    """Everything that differs between the full run and --quick."""

    vae_steps: int
    train_minutes: float           # U-Net training budget, minutes of the training process's CPU time
    max_train_steps: int           # cap (the quick run stops here)
    chunk_steps: int               # checkpoint/resume granularity of the time budget
    n_images: int                  # generated images per comparison (>= 200 in the full run)
    sample_steps: int
    guidance: float
    max_tiles: int | None          # cap on tiles per dataset (quick)
    sampler: str = "dpmpp"         # DPM-Solver++ 20 steps: ~2.5x fewer U-Net calls than DDIM 50, same schedule
    overrides: list[str] = field(default_factory=list)


FULL = Sizes(vae_steps=400, train_minutes=20.0, max_train_steps=100_000, chunk_steps=500, n_images=240,
             sample_steps=20, guidance=3.0, max_tiles=None, sampler="dpmpp")
QUICK = Sizes(vae_steps=2, train_minutes=1.0, max_train_steps=4, chunk_steps=2, n_images=12, sample_steps=2,
              guidance=3.0, max_tiles=48, sampler="dpmpp",
              overrides=["vae.scale_tiles=16", "vae.eval_tiles=8", "vae.dihedral_check_tiles=0", "train.heldout_tiles=4"])


@dataclass
class Dataset:
    name: str
    title: str
    kind: str                      # "descriptor" | "class"
    overrides: list[str]
    field: str | None = None       # descriptor template field


DATASETS = {
    "cmu1": Dataset("cmu1", "CMU-1 slide, descriptor text, region split", "descriptor",
                    [f"text.template='{DESCRIPTOR_TEMPLATE}'", "text.missing_summary=empty", "slides.overlap=0"],
                    field="nuclei"),
    "kather": Dataset("kather", "Kather 2016 tiles, class text, split by source image", "class",
                      ["text.template='{label}'", "split.test_fraction=0.3", "text.missing_summary=empty"]),
}
MIN_CHUNK = 50   # steps; a shorter last chunk would spend more on restarting than on training
BASE_OVERRIDES = ["train.validation_images=0", "train.validate_every=0", "train.keep_checkpoints=1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: the code path in about a minute, not a result")
    p.add_argument("--datasets", default="cmu1,kather", help="comma-separated: cmu1, kather")
    p.add_argument("--work", type=Path, default=None, help="workspaces and samples (default: a folder under /tmp; "
                                                             "reruns resume finished stages)")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS.relative_to(ROOT)}; "
                                                            "--quick: WORK/quality.json)")
    p.add_argument("--images", type=Path, default=None, help="grid PNGs (default docs/images; --quick: WORK)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="U-Net training budget per dataset, in minutes of CPU time (default 20)")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--n", type=int, default=None, help="generated images per comparison")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="torch threads per dataset process")
    p.add_argument("--parallel", action="store_true", help="one process per dataset, at the same time")
    p.add_argument("--update-readme", action="store_true",
                   help="write the measured table between README.md's quality-results markers")
    p.add_argument("--combine", nargs="+", type=Path, default=None, metavar="JSON",
                   help="run nothing: one report (--out; README with --update-readme) from finished runs' reports "
                        "or one-dataset records, each dataset keeping the conditions it was measured under")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: run this dataset only
    return p.parse_args(argv)


def sizes_of(args) -> Sizes:
    sizes = QUICK if args.quick else FULL
    updates = {k: v for k, v in (("train_minutes", args.train_minutes), ("vae_steps", args.vae_steps),
                                  ("n_images", args.n)) if v is not None}
    return Sizes(**{**asdict(sizes), **updates})


# ---- data -----------------------------------------------------------------------------------------
# The Kather tiles come at two scales (PROVENANCE.txt): the 150 px originals at 0.495 um/px and a
# third party's 224 px upsampling of the same collection (0.495 * 150 / 224 um/px).
KATHER_SUBSETS = (("kather2016_tiles_original", 0.495), ("kather2016_tiles_tfds_resized224", 0.495 * 150 / 224))


def data_path(name: str) -> Path:
    """The real data through the project's data registry (HISTOSYNTH_DATA_MIRROR, cache or upstream;
    sha256 checked): the slide, or the folder holding the Kather subsets."""
    from histosynth import datasets

    try:
        if name == "cmu1":
            return datasets.fetch("slides/CMU-1-Small-Region.svs")
        return [datasets.fetch_folder(f"tiles/{folder}") for folder, _ in KATHER_SUBSETS][0].parent
    except datasets.DataUnavailable as exc:
        raise SystemExit(f"quality: {exc}") from None


def subsample(ws, max_tiles: int, seed: int = 0) -> None:
    """--quick: keep a few tiles of each split (the index only; pixels stay where they are)."""
    import pandas as pd

    from histosynth.fileio import atomic_path
    from histosynth.slides.index import read_index

    index = read_index(ws)
    parts = [index[index["split"] == s] for s in ("train", "test")]
    keep = pd.concat([p.sample(min(len(p), max_tiles // 2), random_state=seed) for p in parts])
    with atomic_path(ws.tile_index_path) as tmp:
        keep.sort_values("tile_id").to_parquet(tmp, index=False)


# ---- one dataset ----------------------------------------------------------------------------------
def train_for(ws, cfg, budget: int, sizes: Sizes, run_name: str, progress: Path) -> dict:
    """Train in chunks until the budget of CPU time (or the step cap) is reached; each chunk resumes
    from the run's checkpoint, so the steps reached are exactly those of one uninterrupted run.

    The budget is the training process's CPU time, not wall time: on a machine shared with other
    work, wall time measures the neighbours; CPU time is what the training itself used (with one
    torch thread, the wall time it takes on an idle core). `progress` records the steps and CPU time
    spent after every chunk, so a killed and restarted benchmark counts them against the budget
    instead of starting the budget afresh (which trained a resumed run longer than its budget)."""
    from histosynth.train.trainer import train

    spent = spent_so_far(ws.run(run_name), progress)
    cpu, wall, steps, chunks = spent["cpu_s"], spent["wall_s"], spent["steps"], spent["chunks"]
    manifest = ws.run_dir(run_name) / "manifest.json"
    while steps < sizes.max_train_steps:
        chunk = sizes.chunk_steps
        if steps:  # the last chunk takes what the budget has left, at the CPU time per step so far
            chunk = min(chunk, int((sizes.train_minutes * 60 - cpu) / (cpu / steps)))
            if chunk < min(MIN_CHUNK, sizes.chunk_steps):
                break
        target = min(sizes.max_train_steps, steps + chunk)
        chunk_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": target,
                                                                                 "checkpoint_every": sizes.chunk_steps})})
        t0, c0 = time.perf_counter(), time.process_time()
        train(ws, chunk_cfg, budget, run_name=run_name, resume=True)
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
        steps, chunks = target, chunks + 1
        _write_progress(progress, steps=steps, cpu_s=cpu, wall_s=wall, chunks=chunks)
    final = json.loads(manifest.read_text())["results"]
    return {"steps": steps, "train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1),
            "budget_cpu_minutes": sizes.train_minutes, "cpu_s_per_step": round(cpu / max(steps, 1), 3),
            "median_step_wall_s": final.get("step_time_s"), "heldout_loss": final.get("heldout_loss"),
            "heldout_zero_baseline": final.get("heldout_zero_baseline"), "batch_size": cfg.train.batch_size,
            "chunks": chunks, "torch_threads": _threads(), "resumed_with": spent.get("resumed_with")}


def spent_so_far(run, progress: Path) -> dict:
    """Steps and CPU/wall time a killed benchmark already spent on this run: the steps are the latest
    checkpoint's (the truth the trainer resumes from); the time is the progress record's, plus, for
    checkpointed steps the record missed (killed between the checkpoint and the record), the record's
    CPU time per step. CPU spent past the last checkpoint was lost with its steps and is not counted."""
    from histosynth.train.checkpoints import checkpoint_step, latest_checkpoint

    record = json.loads(progress.read_text()) if progress.exists() else {}
    done = {"steps": record.get("steps", 0), "cpu_s": record.get("cpu_s", 0.0),
            "wall_s": record.get("wall_s", 0.0), "chunks": record.get("chunks", 0)}
    latest = latest_checkpoint(run)
    at = checkpoint_step(run, latest) if latest is not None else 0
    if at != done["steps"]:
        if at and not done["steps"]:
            raise SystemExit(f"quality: {run.path} has a checkpoint at step {at} but no record of its CPU time "
                             f"({progress}); delete the run folder to train it within the budget again")
        cpu_per_step, wall_per_step = ((done["cpu_s"] / done["steps"], done["wall_s"] / done["steps"]) if at
                                       else (0.0, 0.0))
        done = {"steps": at, "cpu_s": cpu_per_step * at, "wall_s": wall_per_step * at, "chunks": done["chunks"]}
    if done["steps"]:
        done["resumed_with"] = {"steps": done["steps"], "cpu_s": round(done["cpu_s"], 1)}
    return done


def _write_progress(path: Path, **spent) -> None:
    from histosynth.fileio import write_json

    write_json(path, {k: round(v, 2) if isinstance(v, float) else v for k, v in spent.items()})


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def prepare_workspace(ds: Dataset, ws, cfg, source: Path, sizes: Sizes, root: Path) -> dict:
    """Tile (the Kather tiles: one tile run per scale, into one workspace), split the slide by region,
    and give `embed` its (neutral) summaries; returns the region split, if any."""
    from histosynth.experiments.quality import prepare_text, region_split
    from histosynth.slides.tiler import tile_slides

    runs = [(source / folder, mpp) for folder, mpp in KATHER_SUBSETS] if ds.kind == "class" else [(source, None)]
    for path, mpp in runs:
        failed = tile_slides(ws, cfg, [path], assume_mpp=mpp).get("failed")
        if failed:
            raise SystemExit(f"quality: tiling failed: {failed}")
    split = region_split(ws) if ds.kind == "descriptor" else {}
    if sizes.max_tiles:
        subsample(ws, sizes.max_tiles)
    prepare_text(ws, cfg, cfg.summaries.budget, root / "captions.csv")
    return split


def run_dataset(ds: Dataset, sizes: Sizes, work: Path) -> dict:
    """All stages of one comparison; finished stages are skipped on a rerun (same choices)."""
    import pandas as pd

    from histosynth.experiments.demo import StageClock
    from histosynth.experiments.quality import (class_condition, condition_grid, descriptor_condition,
                                                evaluate_conditioning, label_words)
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.vae import train_vae
    from histosynth.sample.generate import sample_run
    from histosynth.text.embed import embed_workspace
    from histosynth.workspace import Workspace

    root = work / ds.name
    ws = Workspace(root / "workspace")
    settings = [*ds.overrides, *BASE_OVERRIDES, *sizes.overrides, f"vae.steps={sizes.vae_steps}",
                f"sample.guidance={sizes.guidance}", f"sample.steps={sizes.sample_steps}"]
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=settings)
    budget = cfg.summaries.budget
    source = data_path(ds.name)
    stage = StageClock(root / "stages", ["tiny-cpu", *settings, str(source), json.dumps(asdict(sizes))],
                       label=f"quality {ds.name}")
    stage("tile", lambda: _write(root, "split-info", prepare_workspace(ds, ws, cfg, source, sizes, root)))
    split = _read(root, "split-info") or {}
    stage("embed", lambda: embed_workspace(ws, cfg, budget))
    stage("train-vae", lambda: train_vae(ws, cfg))
    stage("encode", lambda: encode_workspace(ws, cfg))
    progress = root / "train-progress.json"
    train_info = stage("train", lambda: train_for(ws, cfg, budget, sizes, "quality", progress)) \
        or _read(root, "train-info")
    _write(root, "train-info", train_info)
    run_dir = ws.run_dir("quality")

    index = pd.read_parquet(ws.tile_index_path)
    condition = descriptor_condition(ds.field) if ds.kind == "descriptor" else class_condition(index)
    samples = root / "samples"
    # Each image is conditioned on the text of a random test tile (recorded as its tile_id), the
    # standard `sample --from-summaries --split test`; evaluate reads the request from that tile.
    stage("sample", lambda: sample_run(run_dir, prompts=None, n=sizes.n_images, from_summaries=True, split="test",
                                       sampler=sizes.sampler, steps=sizes.sample_steps, guidance=sizes.guidance,
                                       seed=0, out_dir=samples))
    metrics = stage("evaluate", lambda: evaluate_conditioning(ws, samples, root / "eval", condition)) \
        or _read(root, "metrics")
    _write(root, "metrics", metrics)
    grid_values = (["low", "high"] if ds.kind == "descriptor" else
                   [v for key in ("adipose", "tumor", "lympho") for v in condition.values if key in v.lower()])
    grid = condition_grid(ws, index, condition, samples, root / f"quality-{ds.name}.png", values=grid_values or None,
                          title=f"{ds.title}: real test tiles vs generated from the condition text",
                          label=None if ds.kind == "descriptor" else label_words)
    return {"dataset": ds.name, "title": ds.title, "source": str(source), "config_overrides": settings,
            "tiles": {s: int((index["split"] == s).sum()) for s in ("train", "test")}, "split": split or None,
            "condition": asdict(condition), "training": train_info, "stages": stage.records,
            "images_generated": sizes.n_images, "sampler": f"{sizes.sampler}-{sizes.sample_steps}",
            "guidance": sizes.guidance, "metrics": metrics, "grid": str(grid), "target": TARGETS[ds.name]}


def _write(root: Path, name: str, data) -> None:
    from histosynth.fileio import write_json

    write_json(root / f"{name}.json", data)


def _read(root: Path, name: str):
    path = root / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---- the whole benchmark --------------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_children(names: list[str], args, work: Path) -> list[dict]:
    """--parallel: one process per dataset (each with --threads torch threads)."""
    procs = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--work", str(work), "--threads", str(args.threads)]
        cmd += ["--quick"] if args.quick else []
        cmd += [f"--{k.replace('_', '-')}={v}" for k, v in (("train_minutes", args.train_minutes),
                                                            ("vae_steps", args.vae_steps), ("n", args.n)) if v is not None]
        log = work / name / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"quality: {name} in its own process; progress in {log}", flush=True)
        with open(log, "a") as handle:
            procs.append((name, subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)))
    failed = [name for name, p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"quality: dataset(s) {', '.join(failed)} failed (see {work}/<dataset>/log.txt)")
    return [json.loads((work / name / "result.json").read_text()) for name in names]


def one(name: str, sizes: Sizes, work: Path) -> dict:
    result = run_dataset(DATASETS[name], sizes, work)
    _write(work / name, "result", result)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sizes = sizes_of(args)
    work = args.work or Path("/tmp") / f"histosynth-quality{'-quick' if args.quick else ''}"
    if args.one:
        one(args.one, sizes, work)
        return {}
    if args.combine:
        return write_report(combine(args.combine, command_line(argv)), args.out or RESULTS, args.update_readme)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise SystemExit(f"quality: --datasets: unknown {', '.join(unknown)} (choose from {', '.join(DATASETS)})")
    started, load_before = time.perf_counter(), load_average()
    results = run_children(names, args, work) if args.parallel else [one(n, sizes, work) for n in names]
    images = args.images or (work if args.quick else IMAGES)
    for r in results:
        dest = images / Path(r["grid"]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(r["grid"]).read_bytes())
        r["grid"] = str(dest.relative_to(ROOT)) if dest.is_relative_to(ROOT) else str(dest)
    from histosynth.experiments.quality import table_rows

    report = {"benchmark": "quality", "mode": "quick (toy sizes; NOT a result)" if args.quick else "full",
              "preset": "tiny-cpu", "sizes": asdict(sizes), "threads_per_dataset": args.threads,
              "parallel": args.parallel, "cpu_count": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": load_average(), "wall_s": round(time.perf_counter() - started, 1),
              "measured": time.strftime("%Y-%m-%d", time.gmtime()),
              "datasets": results, "table": table_rows(results), "command": command_line(argv)}
    return write_report(report, args.out or (work / "quality.json" if args.quick else RESULTS),
                        args.update_readme and not args.quick)


def command_line(argv) -> str:
    return " ".join(["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])])


def write_report(report: dict, out: Path, readme: bool) -> dict:
    from histosynth.fileio import write_json

    write_json(out, report)
    print_table(report)
    print(f"wrote {out}")
    if readme:
        update_readme(report)
    return report


# What a run was measured under; a combined report keeps it with each dataset.
RUN_KEYS = ("measured", "command", "sizes", "threads_per_dataset", "parallel", "cpu_count", "load_average_before",
            "load_average_after", "wall_s")


def combine(paths: list[Path], command: str) -> dict:
    """One report from finished runs (whole reports, or one dataset's result.json): the datasets side
    by side, each with `run`, the conditions of the run that measured it."""
    from histosynth.experiments.quality import table_rows

    datasets = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"quality: --combine {path}: {exc}") from None
        if "datasets" in data:
            run = {"report": str(path), **{k: data[k] for k in RUN_KEYS if k in data}}
            datasets += [{**d, "run": d.get("run") or run} for d in data["datasets"]]
        elif "dataset" in data and "metrics" in data:
            datasets.append({**data, "run": data.get("run") or {"report": str(path)}})
        else:
            raise SystemExit(f"quality: --combine {path}: neither a quality report nor a dataset's result")
    names = [d["dataset"] for d in datasets]
    if len(set(names)) != len(names):
        raise SystemExit(f"quality: --combine: a dataset appears twice ({', '.join(names)})")
    for d in datasets:  # the picture as committed (a run's own copy lived under its work folder)
        committed = IMAGES / f"quality-{d['dataset']}.png"
        d["grid"] = str(committed.relative_to(ROOT)) if committed.exists() else d.get("grid")
    return {"benchmark": "quality", "mode": "full", "preset": "tiny-cpu", "combined_from": [str(p) for p in paths],
            "datasets": datasets, "table": table_rows(datasets), "command": command}


README_MARKERS = ("<!-- quality-results -->", "<!-- /quality-results -->")


def markdown(report: dict) -> str:
    """The results as README text: conditions of the run, the table, the targets, the pictures."""
    lines = []
    for d in report["datasets"]:
        t, stages, run = d["training"], {s["name"]: s for s in d["stages"]}, d.get("run") or report
        times = ", ".join(f"{name} {stages[name]['cpu_time_s']:.0f} s CPU / {stages[name]['wall_time_s']:.0f} s wall"
                          for name in ("tile", "train-vae", "encode", "sample", "evaluate") if name in stages)
        load = (f"load average {run['load_average_before'][0]} before, {run['load_average_after'][0]} after"
                if run.get("load_average_before") else f"load average {run.get('load_average', 'not recorded')}")
        lines.append(f"- **{d['dataset']}** ({d['tiles']['train']} train / {d['tiles']['test']} test tiles; measured "
                     f"{run.get('measured', 'earlier')}, {run.get('threads_per_dataset', t['torch_threads'])} torch "
                     f"thread, {load}): U-Net {t['steps']} steps in {t['train_cpu_s'] / 60:.1f} CPU min "
                     f"({t['train_wall_s'] / 60:.1f} min wall); {times}. Target "
                     f"{'met' if d['metrics']['targets']['met'] else 'NOT met'}: {d['metrics']['targets']['rule']}."
                     + (f" {run['note']}" if run.get("note") else ""))
    lines += ["", "| dataset | metric | generated [95% CI] | control [95% CI] | reference |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['metric']} | {r['generated']} | {r['control']} | {r['reference']} |"
              for r in report["table"]]
    lines.append("")
    for d in report["datasets"]:
        lines.append(f"![{d['title']}: real test tiles (left) vs images generated from test tiles' condition texts "
                     f"(right), one row per requested condition]({d['grid']})")
    return "\n".join(lines)


def update_readme(report: dict) -> None:
    from histosynth.fileio import write_text

    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        print(f"(README.md has no {start} markers; not updated)")
        return
    head, rest = text.split(start, 1)
    write_text(readme, head + start + "\n" + markdown(report) + "\n" + end + rest.split(end, 1)[1])
    print("updated README.md (quality results)")


def print_table(report: dict) -> None:
    conditions = (f"load average {report['load_average_before']} -> {report['load_average_after']}, "
                  f"{report['wall_s']:.0f} s" if "wall_s" in report else "combined from " + ", ".join(
                      report.get("combined_from", [])))
    print(f"\nquality benchmark ({report['mode']}), preset tiny-cpu, {conditions}")
    header = ("dataset", "metric", "generated [95% CI]", "control [95% CI]", "reference")
    rows = [header] + [tuple(r[k] for k in ("dataset", "metric", "generated", "control", "reference"))
                       for r in report["table"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
