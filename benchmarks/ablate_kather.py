"""The acceptance grid on real H&E: 2 text encoders x 2 condition fields x 2 seeds on the Kather tiles.

    python benchmarks/ablate_kather.py            # the full run (sized for <= 40 min of CPU on 2 cores)
    python benchmarks/ablate_kather.py --quick    # toy sizes: the code path in a few minutes, not a result

Data: the Kather 2016 colorectal tiles (CC BY 4.0; 8 classes; the 150 px originals and the 224 px
set, through the data registry `histosynth.datasets`, e.g. HISTOSYNTH_DATA_MIRROR), tiled at 64 px
and 0.5 um/px into one workspace, split by source image (30 % test). There are no pathology reports
for these tiles: each source image (a "case") gets one line naming its class ("Colorectal tissue:
tumor."), so the grid's per-image prompt_margin groups the real tiles by class: an image counts as
following its text when its stain (HED) is closer to its own class's real tiles than to any other
class's.

Grid (histosynth.experiments.ablate, the same code as `histosynth ablate`):
- encoders: minilm (real weights) and random-clip (a randomly initialised CLIP-style tower: a
  machinery check, no conclusion about CLIP);
- fields: "class" (template "{label}", the tile's class folder) vs "none" (every caption "": text
  disabled). On 2 CPU cores each model trains for a few hundred steps, so the question this grid can
  answer is whether the class text steers the images at all with each encoder; finer questions
  (class vs class + patch descriptors) need longer training than 40 minutes allow;
- seeds 0 and 1, plus the null cell (the baseline trained with seeds 1000 and 1001): the noise check.

One VAE and one latent cache are shared by all cells (trained once). Every stage is resumable: a
rerun skips finished stages and finished (cell, seed)s and only redoes the analysis. Prints wall and
CPU time (this process and its children: each cell trains in its own process) per stage and in
total, and the load average before and after; copies table.md, table.csv, comparisons.csv, the axis
plots and a JSON of timings and what the run covers to benchmarks/results/ablate-kather*.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KATHER_SUBSETS = (("kather2016_tiles_original", 0.495), ("kather2016_tiles_tfds_resized224", 0.495 * 150 / 224))
TEMPLATES = {"class": "{label}",       # the tile's class folder as its condition text
             # class and the tile's own patch descriptors (quantile bins of the training tiles):
             # `--fields class,class+descriptors` asks whether the descriptor words add anything
             "class+descriptors": "{label}; {nuclei} nuclei; {stroma} stroma"}
WHAT = ("2 text encoders (minilm real, random-clip random tower) x 2 fields (class text '{label}' vs none) x 2 seeds "
        "on the real Kather 2016 H&E tiles (null cell: the baseline with seeds + 1000, when on); one shared VAE; each "
        "(cell, seed) trained in its own process, sampled once per test tile (up to n), evaluated with "
        "evaluate.metrics and the per-image prompt_margin / stain_error")
NOTE = "random-clip is a randomly initialised tower: its cells check the machinery, no conclusion about CLIP"


@dataclass
class Sizes:
    """Everything that differs between the full run and --quick."""

    vae_steps: int
    train_steps: int               # U-Net steps per (cell, seed)
    n_images: int | None           # images per (cell, seed); None: one per test tile (148)
    sample_steps: int
    metrics: list[str]             # evaluate.metrics of every (cell, seed)
    max_tiles: int | None = None   # cap on tiles (quick)
    overrides: list[str] = field(default_factory=list)


# The planted check's fast-learning settings (tests/test_ablate_grid.py PLANTED): a small U-Net,
# v-prediction and lr 1e-3 learn the stain of a condition within a few hundred steps.
COMMON = ["unet.block_out_channels=[32,64,64]", "diffusion.prediction_type=v_prediction", "train.lr=1e-3",
          "train.batch_size=32", "train.validation_images=0", "train.validate_every=0", "train.keep_checkpoints=1",
          "vae.lr=1e-3", "sample.sampler=dpmpp", "sample.guidance=3.0", "sample.batch_size=50",
          "split.test_fraction=0.3", "text.missing_summary=empty"]
# Sized to a measured first attempt (train 250 steps 225 s, 148 images 44 s, every metric 127 s wall
# per (cell, seed) at load ~5): c2st and the class classifier (each trains a CNN per (cell, seed))
# are left out, 96 images and 200 steps; FID/KID/PR need Inception weights that are not offline.
FAST_METRICS = ["fid", "kid", "pr", "stain", "memorization", "fidelity", "descriptors"]
FULL = Sizes(vae_steps=250, train_steps=200, n_images=96, sample_steps=20, metrics=FAST_METRICS)
QUICK = Sizes(vae_steps=4, train_steps=4, n_images=8, sample_steps=3, metrics=FAST_METRICS, max_tiles=64,
              overrides=["vae.scale_tiles=16", "vae.eval_tiles=8", "vae.dihedral_check_tiles=0",
                         "train.heldout_tiles=4"])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: the code path, not a result")
    p.add_argument("--work", type=Path, default=None, help="workspace (default /tmp/histosynth-ablate-kather[-quick])")
    p.add_argument("--results", type=Path, default=None,
                   help="where the results go (default benchmarks/results; --quick: WORK/results)")
    p.add_argument("--no-null-cell", action="store_true", help="leave out the null cell (2 trainings fewer)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    p.add_argument("--encoders", default="minilm,random-clip",
                   help="a subset runs part of the grid (e.g. a second process on a copy of the workspace)")
    p.add_argument("--fields", default="class,none", help="a subset runs part of the grid")
    p.add_argument("--seeds", default="0,1", help="a subset runs part of the grid")
    p.add_argument("--merge", type=Path, nargs="*", default=None,
                   help="analyse the finished (cell, seed)s of WORK and of these other WORK folders together")
    return p.parse_args(argv)


# ---- timing ---------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (each cell's training process)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Stages:
    """Runs each stage once (a marker file per stage), timing wall and CPU time; a rerun skips it."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint, self.records = folder, fingerprint, []
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, fn, key: str | None = None) -> None:
        """`key`: what this stage depends on (default: every choice of the run)."""
        from histosynth.fileio import read_json, write_json

        fingerprint = key or self.fingerprint
        marker = self.folder / f"{name}.json"
        if marker.exists() and read_json(marker).get("fingerprint") == fingerprint:
            self.records.append({**read_json(marker), "status": "resumed"})
            print(f"ablate-kather: {name}: finished before, skipped", flush=True)
            return
        print(f"ablate-kather: {name} ... (load {load_average()})", flush=True)
        t0, c0, load0 = time.perf_counter(), cpu_seconds(), load_average()
        fn()
        record = {"name": name, "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_seconds() - c0, 1),
                  "load_before": load0, "load_after": load_average(), "fingerprint": fingerprint}
        write_json(marker, record)
        self.records.append({**record, "status": "ran"})
        print(f"ablate-kather: {name}: wall {record['wall_s']} s, CPU {record['cpu_s']} s", flush=True)


# ---- data -----------------------------------------------------------------------------------------
def class_words(label: str) -> str:
    from histosynth.experiments.quality import label_words

    return label_words(label)


def build_workspace(ws, cfg, sizes: Sizes, work: Path) -> None:
    """Tile both Kather subsets into one workspace and give every source image a one-line class report."""
    import csv
    import io

    from histosynth import datasets
    from histosynth.fileio import atomic_path
    from histosynth.reports.ingest import ingest_reports
    from histosynth.slides.index import read_index
    from histosynth.slides.tiler import tile_slides

    for folder, mpp in KATHER_SUBSETS:
        try:
            path = datasets.fetch_folder(f"tiles/{folder}")
        except datasets.DataUnavailable as exc:
            raise SystemExit(f"ablate-kather: {exc}") from None
        failed = tile_slides(ws, cfg, [path], assume_mpp=mpp).get("failed")
        if failed:
            raise SystemExit(f"ablate-kather: tiling failed: {failed}")
    if sizes.max_tiles:
        keep_some_tiles(ws, sizes.max_tiles)
    index = read_index(ws)
    label_of = index.groupby("case_id")["label"].first()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["patient_filename", "text", "patient_id"])
    writer.writeheader()
    writer.writerows({"patient_filename": case, "patient_id": case,
                      "text": f"Colorectal tissue: {class_words(label)}."} for case, label in label_of.items())
    reports = work / "class-reports.csv"
    with atomic_path(reports) as tmp:
        tmp.write_text(buf.getvalue())
    ingest_reports(ws, cfg, reports)


def keep_some_tiles(ws, max_tiles: int) -> None:
    """--quick: a few tiles of each split (the index only)."""
    import pandas as pd

    from histosynth.fileio import atomic_path
    from histosynth.slides.index import read_index

    index = read_index(ws)
    parts = [index[index["split"] == s] for s in ("train", "test")]
    keep = pd.concat([p.sample(min(len(p), max_tiles // 2), random_state=0) for p in parts])
    with atomic_path(ws.tile_index_path) as tmp:
        keep.sort_values("tile_id").to_parquet(tmp, index=False)


# ---- results --------------------------------------------------------------------------------------
def copy_results(ws, dest: Path, summary: dict) -> dict:
    """table.md, table.csv, comparisons.csv, axis plots and the summary JSON as ablate-kather*."""
    from histosynth.fileio import write_json

    dest.mkdir(parents=True, exist_ok=True)
    copied = {}
    for name, target in (("table.md", "ablate-kather.md"), ("table.csv", "ablate-kather-table.csv"),
                         ("comparisons.csv", "ablate-kather-comparisons.csv")):
        shutil.copyfile(ws.ablation_dir / name, dest / target)
        copied[name] = target
    for plot in sorted(ws.ablation_dir.glob("axis-*.png")):
        shutil.copyfile(plot, dest / f"ablate-kather-{plot.name}")
        copied[plot.name] = f"ablate-kather-{plot.name}"
    summary["files"] = copied
    write_json(dest / "ablate-kather.json", summary)
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from histosynth.experiments import ablate
    from histosynth.experiments.runner import Pipeline
    from histosynth.fileio import read_json
    from histosynth.workspace import Workspace

    sizes = QUICK if args.quick else FULL
    work = args.work or Path("/tmp") / f"histosynth-ablate-kather{'-quick' if args.quick else ''}"
    dest = args.results or (work / "results" if args.quick else RESULTS)
    settings = [*COMMON, *sizes.overrides, f"vae.steps={sizes.vae_steps}", f"train.steps={sizes.train_steps}",
                f"train.checkpoint_every={sizes.train_steps}", f"sample.steps={sizes.sample_steps}",
                f"evaluate.metrics=[{','.join(sizes.metrics)}]"]
    ws = Workspace(work / "workspace")
    cfg = ws.ensure_config(preset="tiny-cpu", overrides=settings)
    spec = ablate.load_grid(None, encoders=["minilm", "random-clip"], fields=["class", "none"], seeds=[0, 1],
                            templates=TEMPLATES, n=sizes.n_images, split="test", threads=args.threads,
                            null_cell=not args.no_null_cell)
    if args.merge is not None:
        return merge(ws, cfg, spec, [work, *args.merge], dest, settings)
    part = {"encoders": [e for e in args.encoders.split(",") if e], "fields": [f for f in args.fields.split(",") if f],
            "seeds": [int(x) for x in args.seeds.split(",") if x]}
    if any(part[k] != getattr(spec, k) for k in part):
        spec = spec.model_copy(update=part)
        dest = work / "results"   # a part of the grid: its table is not the result
    stages = Stages(work / "stages", json.dumps([settings, asdict(sizes)]))
    started, cpu0, load0 = time.perf_counter(), cpu_seconds(), load_average()
    stages("workspace", lambda: build_workspace(ws, cfg, sizes, work), key=json.dumps([COMMON, sizes.max_tiles]))
    stages("vae+encode", lambda: Pipeline(ws, cfg).run(stages=["train-vae", "encode"]),
           key=json.dumps([COMMON, sizes.overrides, sizes.vae_steps]))
    stages("grid", lambda: ablate.run_grid(ws, cfg, spec, preset="tiny-cpu", overrides=settings))
    wall, cpu, load1 = time.perf_counter() - started, cpu_seconds() - cpu0, load_average()
    done = [r for r in stages.records if r["status"] == "ran"]
    first_run = {"wall_s": round(sum(r["wall_s"] for r in stages.records), 1),
                 "cpu_s": round(sum(r["cpu_s"] for r in stages.records), 1)}
    grid = read_json(ws.ablation_dir / ablate.GRID_FILE)
    summary = {
        "what": WHAT,
        "quick": args.quick, "sizes": asdict(sizes), "config_overrides": settings, "grid": spec.model_dump(),
        "torch_threads_per_training": args.threads,
        "stages": stages.records,
        "total_all_stages": first_run,     # the sum over stages as first run (resumed stages keep their figures)
        "this_invocation": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "stages_run": [r["name"] for r in done],
                            "load_before": load0, "load_after": load1},
        "machine": {"cpus": os.cpu_count()},
        "baseline": grid["baseline"], "sentences": grid["sentences"],
        "note": NOTE,
    }
    copy_results(ws, dest, summary)
    for r in stages.records:
        print(f"  {r['name']:<12} wall {r['wall_s']:>7.1f} s  CPU {r['cpu_s']:>7.1f} s  ({r['status']}; "
              f"load {r['load_before']} -> {r['load_after']})")
    print(f"  {'total':<12} wall {first_run['wall_s']:>7.1f} s  CPU {first_run['cpu_s']:>7.1f} s")
    print(f"load average before {load0}, after {load1}")
    for axis, sentence in grid["sentences"].items():
        print(f"- {sentence}")
    print(f"results: {dest}/ablate-kather*")
    return summary


def merge(ws, cfg, spec, works: list[Path], dest: Path, settings: list[str]) -> dict:
    """The grid's analysis over the (cell, seed)s finished in several copies of the workspace (each ran
    a part of the grid in its own process, on the same VAE, latents, random tower and config)."""
    import pandas as pd

    from histosynth.experiments import ablate
    from histosynth.fileio import read_json

    cells = ablate.grid_cells(spec, cfg)
    base = ablate.baseline_cell(spec, cells)
    cells = ablate.with_null_cell(spec, cells, base)
    rows, images, stage_records = [], [], []
    for cell in cells:
        for rank, seed in enumerate(cell.seeds(spec.seeds)):
            found = [w / "workspace" / "ablation" / cell.name / f"seed-{seed}" for w in works]
            found = [f for f in found if (f / ablate.CELL_FILE).exists() and (f / "per_image.csv").exists()]
            if not found:
                raise SystemExit(f"ablate-kather: --merge: {cell.name} seed {seed} is finished in none of {works}")
            rows.append({**read_json(found[0] / ablate.CELL_FILE), "seed_rank": rank})
            images.append(pd.read_csv(found[0] / "per_image.csv").assign(cell=cell.name, seed=seed, seed_rank=rank))
    encoders = {e: {"kind": "real" if e in ablate.REAL_OFFLINE_ENCODERS else "random"} for e in spec.encoders}
    ablate.analyse(rows, images, cells, base, spec, encoders, ws.ablation_dir)
    for w in works:
        for marker in sorted((w / "stages").glob("*.json")):
            stage_records.append({**read_json(marker), "work": str(w)})
    # a part stopped once its cells were done (the other copy ran the rest) records its own times here
    timing = [{**read_json(f), "work": str(w)} for w in works for f in sorted(w.glob("process-*.json"))]
    grid = read_json(ws.ablation_dir / ablate.GRID_FILE)
    summary = {"what": WHAT, "config_overrides": settings, "grid": spec.model_dump(),
               "stage_records": stage_records, "processes": timing, "baseline": grid["baseline"],
               "sentences": grid["sentences"], "note": NOTE}
    copy_results(ws, dest, summary)
    for sentence in grid["sentences"].values():
        print(f"- {sentence}")
    print(f"results: {dest}/ablate-kather*")
    return summary


if __name__ == "__main__":
    main()
