"""The demo: from nothing to an HTML report in one command, on the built-in sample, offline.

    sample data -> tile -> reports -> summarize (extractive) -> embed (MiniLM) -> train a VAE
    -> encode -> train the U-Net -> sample -> evaluate -> OUT/report/index.html

Every stage is timed and its peak memory measured around the call; the figures land in
`OUT/stages/<stage>.json`, and a rerun skips the stages that have one (for the same preset,
overrides and inputs), so an interrupted demo resumes where it stopped. The same function runs
on real slides and reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import HistoSynthConfig
from ..console import HistosynthError, info
from ..fileio import read_json, text_hash, write_json
from ..manifest import PeakMemory
from ..workspace import Workspace

RUN_NAME = "demo"
# The tiny-cpu preset is sized for the chain to fit minutes on 2 cores; the demo also samples with
# 25 DDIM steps instead of 50. Applied before the user's overrides, which win.
TINY_CPU_SETTINGS = ("sample.steps=25",)
# The built-in sample has three cases, one of them the only haematoxylin-only one. Split seed 1
# holds out an IHC case (TCGA-HS-0002), so every condition text of the test split also occurs in
# training; seed 0 would hold out the haematoxylin-only case, whose text the model never saw.
BUILTIN_SAMPLE_SETTINGS = ("split.seed=1",)
PROMPT_SAMPLES = 8        # images per prompt in the report
MAX_PROMPTS = 4           # distinct condition texts shown
GRID_TILES = 32           # tiles per side of the real-vs-generated picture


def demo_settings(preset: str, overrides: Sequence[str], builtin_sample: bool) -> list[str]:
    settings = list(TINY_CPU_SETTINGS) if preset == "tiny-cpu" else []
    settings += BUILTIN_SAMPLE_SETTINGS if builtin_sample else ()
    return [*settings, *overrides]


class StageClock:
    """Runs a demo stage once: times it, measures its peak memory, and skips it on a rerun."""

    def __init__(self, folder: Path, choices: Sequence[str], label: str = "demo"):
        self.folder = folder
        self.label = label
        # What the user chose (preset, overrides, inputs), not the resolved config: a new config
        # field in a newer histosynth must not redo a finished demo.
        self.fingerprint = text_hash("\n".join(choices))
        self.records: list[dict[str, Any]] = []

    def changed(self, name: str) -> bool:
        """True when an earlier demo finished this stage with another config (start it afresh)."""
        marker = self.folder / f"{name}.json"
        return marker.exists() and read_json(marker).get("fingerprint") != self.fingerprint

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        marker = self.folder / f"{name}.json"
        if marker.exists():
            record = read_json(marker)
            if record.get("fingerprint") == self.fingerprint:
                info(f"{self.label}: {name}: finished before, skipped")
                self.records.append({**record, "status": "resumed"})
                return None
        info(f"{self.label}: {name} ...")
        t0, cpu0 = time.perf_counter(), time.process_time()
        with PeakMemory() as memory:
            result = fn()
        # CPU time too: on a shared machine wall time says more about the neighbours than the stage.
        record = {"name": name, "wall_time_s": round(time.perf_counter() - t0, 2),
                  "cpu_time_s": round(time.process_time() - cpu0, 2), **memory.summary(),
                  "fingerprint": self.fingerprint}
        write_json(marker, record)
        self.records.append({**record, "status": "ran"})
        info(f"{self.label}: {name}: {record['wall_time_s']:.1f} s")
        return result


def run_demo(out: str | Path, slides: Sequence[str | Path] | None = None, reports: str | Path | None = None,
             preset: str = "tiny-cpu", overrides: Sequence[str] = ()) -> Path:
    """Run (or resume) the whole pipeline under `out`; returns the report's index.html."""
    from ..evaluate.run import evaluate
    from ..latents.encode import encode_workspace
    from ..latents.vae import train_vae
    from ..reports.ingest import ingest_reports
    from ..reports.summarize import summarize_workspace
    from ..sample.generate import sample_run
    from ..slides.tiler import tile_slides
    from ..text.embed import embed_workspace
    from ..train.trainer import train

    out = Path(out)
    if (slides is None) != (reports is None):
        raise HistosynthError("demo: give both --slides and --reports, or neither (the built-in sample)")
    started, cpu_started = time.perf_counter(), time.process_time()
    builtin_sample = slides is None
    if builtin_sample:
        from ..sample_data import make_sample

        sample = make_sample(out / "sample")  # seconds; makes the same files every time
        slides, reports, data = sample["slides"], sample["reports"], "built-in sample (scikit-image IHC colon picture)"
    else:
        data = f"slides {', '.join(map(str, slides))}; reports {reports}"
    slides = [Path(s) for s in slides]
    ws = Workspace(out / "workspace")
    settings = demo_settings(preset, overrides, builtin_sample)
    cfg = ws.ensure_config(preset=preset, overrides=settings)
    budget = cfg.summaries.budget
    run_dir = ws.run_dir(RUN_NAME)
    samples_dir, prompts_dir, eval_dir = out / "samples" / "test", out / "samples" / "prompts", out / "eval"
    stage = StageClock(out / "stages", [preset, *settings, *map(str, slides), str(reports)])

    stage("tile", lambda: tile_slides(ws, cfg, slides))
    stage("reports", lambda: ingest_reports(ws, cfg, Path(reports)))
    stage("summarize", lambda: summarize_workspace(ws, cfg, budget))
    stage("embed", lambda: embed_workspace(ws, cfg, budget))
    stage("train-vae", lambda: train_vae(ws, cfg))
    stage("encode", lambda: encode_workspace(ws, cfg))
    # An interrupted run resumes from its checkpoint; one finished with another config starts over.
    stage("train", lambda: train(ws, cfg, budget, run_name=RUN_NAME, resume=not stage.changed("train")))
    n_test = min(GRID_TILES, len(test_tile_ids(ws)))
    stage("sample", lambda: sample_run(run_dir, prompts=None, n=n_test, from_summaries=True, split="test",
                                        seed=cfg.sample.seed, out_dir=samples_dir))
    prompts = demo_prompts(ws, budget)
    stage("sample-prompts", lambda: sample_run(run_dir, prompts=prompts, n=PROMPT_SAMPLES * len(prompts),
                                                seed=cfg.sample.seed, out_dir=prompts_dir))
    stage("evaluate", lambda: evaluate(f"{ws.root}:test", samples_dir, eval_dir, train=f"{ws.root}:train",
                                       inception_weights=cfg.evaluate.inception_weights))

    from .report import write_report

    report_dir = out / "report"
    results = {
        "title": "histosynth demo",
        "preset": cfg.preset,
        "smoke": is_smoke(cfg),
        "data": data,
        "device": device_name(),
        "stages": stage.records,
        "total_wall_s": time.perf_counter() - started,
        "total_cpu_s": time.process_time() - cpu_started,
        "metrics": metric_summary(read_json(eval_dir / "eval.json")),
        "images": report_images(ws, run_dir, samples_dir, prompts_dir, report_dir),
        "notes": [f"Summary budget {budget} tokens ({cfg.summaries.backend}); text encoder {cfg.text.encoder}; "
                  f"U-Net trained {cfg.train.steps} steps, VAE {cfg.vae.steps} steps; sampler "
                  f"{cfg.sample.sampler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance}.",
                  split_note(ws)],
    }
    path = write_report(results, report_dir)
    write_json(report_dir / "results.json", results)
    info(f"report: {path}")
    return path


def is_smoke(cfg: HistoSynthConfig) -> bool:
    import torch

    return cfg.preset == "tiny-cpu" or not torch.cuda.is_available()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"


def test_tile_ids(ws: Workspace) -> list[int]:
    from ..slides.index import read_index

    index = read_index(ws)
    return index.loc[index["split"] == "test", "tile_id"].tolist()


def split_note(ws: Workspace) -> str:
    from ..slides.index import read_index

    index = read_index(ws)
    parts = []
    for split in ("train", "test"):
        rows = index[index["split"] == split]
        parts.append(f"{split}: {len(rows)} tiles of {', '.join(sorted(rows['case_id'].unique())) or 'no case'}")
    return "Case-level split (generated images are conditioned on test cases' texts): " + "; ".join(parts) + "."


def demo_prompts(ws: Workspace, budget: int) -> list[str]:
    """The first few distinct summaries (train and test cases), so the report shows what text changes."""
    from ..reports.summarize import read_summaries

    texts = read_summaries(ws, budget)["summary"].drop_duplicates().tolist()
    return texts[:MAX_PROMPTS]


def metric_summary(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"computed": {name: value}, "skipped": {name: reason}} from an eval.json."""
    computed = {}
    for name, value in scores.get("metrics", {}).items():
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(sub, (int, float)):
                    computed[f"{name}.{key}"] = sub
        elif isinstance(value, (int, float)):
            computed[name] = value
    return {"computed": computed, "skipped": dict(scores.get("skipped", {}))}


def report_images(ws: Workspace, run_dir: Path, samples_dir: Path, prompts_dir: Path, report_dir: Path) -> dict:
    """overview.png (real vs generated), loss.png and one contact sheet per prompt, in the report folder."""
    from ..imageio import contact_sheet, load_rgb, save_png
    from ..sample.generate import read_metadata
    from ..slides.store import TileStore
    from .report import overview_png, plot_loss_curve

    report_dir.mkdir(parents=True, exist_ok=True)
    # Real tile i is the one whose case's text conditioned generated image i.
    records = read_metadata(samples_dir)[:GRID_TILES]
    real = TileStore(ws).get([r["tile_id"] for r in records])
    fake = [load_rgb(samples_dir / r["file"]) for r in records]
    images = {"overview": overview_png(list(real), fake, report_dir / "overview.png",
                                       fake_title="generated from the same tiles' report text")}
    loss_csv = run_dir / "logs" / "loss.csv"
    if loss_csv.exists():
        images["loss_curve"] = plot_loss_curve(loss_csv, report_dir / "loss.png")
    prompts = []
    for i, (prompt, files) in enumerate(images_by_prompt(prompts_dir).items()):
        path = report_dir / f"prompt-{i}.png"
        save_png(path, contact_sheet([load_rgb(f) for f in files], columns=4))
        prompts.append({"prompt": prompt, "image": path})
    images["prompts"] = prompts
    return images


def images_by_prompt(folder: Path) -> dict[str, list[Path]]:
    """Group generated PNGs by their prompt, read from the sample stage's metadata.jsonl."""
    from ..sample.generate import read_metadata

    groups: dict[str, list[Path]] = {}
    for rec in read_metadata(folder):
        groups.setdefault(rec["prompt"], []).append(folder / rec["file"])
    return groups
