"""The demo: from nothing to an HTML report in one command, on the built-in sample, offline.

    sample data -> tile -> reports -> summarize (extractive) -> embed (MiniLM) -> train a VAE
    -> encode -> train the U-Net -> sample -> evaluate -> OUT/report/index.html

Every stage is timed and its peak memory measured around the call; the figures land in
`OUT/stages/<stage>.json`, and a rerun skips the stages that have one (for the same preset,
overrides and inputs), so an interrupted demo resumes where it stopped. The same function runs
on real slides and reports.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import HistoSynthConfig
from ..console import HistosynthError, info
from ..fileio import read_json, text_hash, write_json
from ..manifest import PeakMemory
from ..runfolder import RunFolder
from ..slides.index import read_index
from ..workspace import Workspace
from .runner import STAGES

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
DATA_CHOICES = ("auto", "real", "sample")
REAL_DATA_HINT = "set HISTOSYNTH_DATA_MIRROR to the real-data mirror, e.g. ../shared/data"
CMU1 = "slides/CMU-1-Small-Region.svs"
DESCRIPTOR_TEMPLATE = "{nuclei} nuclei density; {stroma} stroma"  # no {fat}: constant on CMU-1's tiles
# Real H&E at tiny-cpu scale: enough steps for the text to steer the images, within 10 min on 2 cores.
REAL_TINY_SETTINGS = ("vae.steps=200", "train.steps=600", "train.checkpoint_every=100", "train.validation_images=0",
                      "sample.steps=25", "sample.guidance=3.0")
REAL_IMAGES = 96          # generated images, each from a random test tile's condition text
DEMO_STAGE_ORDER = (*STAGES, "sample-prompts")
REAL_SMOKE_NOTE = ("A small model trained for minutes on a CPU. The fidelity figures say whether the text steers "
                   "it at this scale, each beside its control and the real-data reference; the pictures are not "
                   "what a GPU-trained model makes.")


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
             preset: str = "tiny-cpu", overrides: Sequence[str] = (), data: str = "auto") -> Path:
    """Run (or resume) the whole pipeline under `out`; returns the report's index.html.

    data: "auto" (real H&E when the data registry has it, else the built-in sample), "real", "sample";
    ignored when `slides` and `reports` are given."""
    out = Path(out)
    if (slides is None) != (reports is None):
        raise HistosynthError("demo: give both --slides and --reports, or neither (the built-in sample)")
    if data not in DATA_CHOICES:
        raise HistosynthError(f"demo: --data {data}: choose from {', '.join(DATA_CHOICES)}")
    real = None if slides is not None or data == "sample" else real_data()
    if data == "real" and real is None:
        raise HistosynthError(f"demo: --data real: no real H&E found ({REAL_DATA_HINT})")
    if real is not None:
        return run_real_demo(out, real, preset, overrides)
    return run_report_demo(out, slides, reports, preset, overrides)


def run_report_demo(out: Path, slides, reports, preset: str, overrides: Sequence[str]) -> Path:
    """Slides + pathology reports (the built-in sample by default): condition on each case's summary."""
    from .runner import Pipeline, SampleSpec

    started, cpu_started = time.perf_counter(), time.process_time()
    builtin_sample = slides is None
    ws = Workspace(out / "workspace")
    settings = demo_settings(preset, overrides, builtin_sample)
    cfg = ws.ensure_config(preset=preset, overrides=settings)
    if builtin_sample:
        pipe = Pipeline(ws, cfg, sample_data=out / "sample")
        data = "built-in sample (scikit-image IHC colon picture)"
    else:
        pipe = Pipeline(ws, cfg, slides=slides, reports=reports)
        data = f"slides {', '.join(map(str, slides))}; reports {reports}"
    budget = cfg.summaries.budget
    run_dir = ws.run_dir(RUN_NAME)
    samples_dir, prompts_dir, eval_dir = out / "samples" / "test", out / "samples" / "prompts", out / "eval"
    records = pipe.run(stages=[s for s in STAGES if s not in ("sample", "evaluate")], run_name=RUN_NAME)
    n_test = min(GRID_TILES, len(test_tile_ids(ws)))
    records |= pipe.run(stages=["sample", "evaluate"], run_name=RUN_NAME, eval_dir=eval_dir,
                        sample=SampleSpec(n=n_test, out_dir=samples_dir, seed=cfg.sample.seed, split="test"))
    prompts = demo_prompts(ws, budget)
    prompt_record = pipe.run(stages=["sample"], run_name=RUN_NAME, sample=SampleSpec(
        n=PROMPT_SAMPLES * len(prompts), out_dir=prompts_dir, seed=cfg.sample.seed, prompts=prompts))["sample"]
    records["sample-prompts"] = dataclasses.replace(prompt_record, name="sample-prompts")

    report_dir = out / "report"
    results = {
        "title": "histosynth demo", "preset": cfg.preset, "smoke": is_smoke(cfg), "data": data,
        "device": device_name(), "stages": stage_rows(records, DEMO_STAGE_ORDER),
        "total_wall_s": time.perf_counter() - started, "total_cpu_s": time.process_time() - cpu_started,
        "metrics": metric_summary(read_json(eval_dir / "eval.json")),
        "images": report_images(ws, run_dir, samples_dir, prompts_dir, report_dir),
        "notes": [f"Summary budget {budget} tokens ({cfg.summaries.backend}); text encoder {cfg.text.encoder}; "
                  f"U-Net trained {cfg.train.steps} steps, VAE {cfg.vae.steps} steps; sampler "
                  f"{cfg.sample.sampler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance}.",
                  split_note(ws)],
    }
    return finish_report(results, report_dir)


def run_real_demo(out: Path, real: "RealData", preset: str, overrides: Sequence[str]) -> Path:
    """Real H&E without reports: condition on what each tile shows (descriptor words or its class),
    then show the conditioning at work: a grid per requested condition and fidelity with its control."""
    from . import quality
    from .runner import Pipeline, SampleSpec

    started, cpu_started = time.perf_counter(), time.process_time()
    ws = Workspace(out / "workspace")
    settings = [*(REAL_TINY_SETTINGS if preset == "tiny-cpu" else ()), *real.overrides, *overrides]
    cfg = ws.ensure_config(preset=preset, overrides=settings)
    budget = cfg.summaries.budget
    captions = out / "captions.csv"
    pipe = Pipeline(ws, cfg, slides=[real.source], reports=captions)
    records = pipe.run(stages=["tile"], run_name=RUN_NAME)
    split = quality.region_split(ws) if real.kind == "descriptor" else None  # one slide: hold out a region
    quality.write_captions(ws, captions)
    records |= pipe.run(stages=["reports", "summarize", "embed", "train-vae", "encode", "train"], run_name=RUN_NAME)
    run_dir = ws.run_dir(RUN_NAME)

    index = read_index(ws)
    condition = quality.descriptor_condition(real.field) if real.kind == "descriptor" else quality.class_condition(index)
    # Each image from the text of a random test tile (its tile_id recorded): evaluate reads what it requested.
    samples_dir, eval_dir, report_dir = out / "samples" / "test", out / "eval", out / "report"
    records |= pipe.run(stages=["sample", "evaluate"], run_name=RUN_NAME, eval_dir=eval_dir, sample=SampleSpec(
        n=REAL_IMAGES, out_dir=samples_dir, seed=cfg.sample.seed, split="test"))
    eval_json = read_json(eval_dir / "eval.json")
    fidelity = quality.summarize_eval(eval_json, condition)
    report_dir.mkdir(parents=True, exist_ok=True)
    grid = quality.condition_grid(ws, index, condition, samples_dir, report_dir / "conditions.png",
                                  values=real.grid_values or None, title="real test tiles vs images generated "
                                                                          "from test tiles' condition texts")
    results = {
        "title": "histosynth demo", "preset": cfg.preset, "smoke": is_smoke(cfg), "data": real.description,
        "smoke_note": REAL_SMOKE_NOTE,
        "device": device_name(), "stages": stage_rows(records, STAGES),
        "total_wall_s": time.perf_counter() - started, "total_cpu_s": time.process_time() - cpu_started,
        "metrics": metric_summary(eval_json),
        "conditioning": {"grid": grid, "condition": condition.column, "figures": fidelity,
                         "rows": quality.table_rows([{"dataset": real.name, "metrics": fidelity}]),
                         "explanation": real.explanation},
        "images": {"loss_curve": report_loss(run_dir, report_dir)},
        "notes": [f"Condition text: '{cfg.text.template}'" + (f" (words: {', '.join(condition.values)})"
                                                               if real.kind == "descriptor" else "") +
                  f"; text encoder {cfg.text.encoder}; U-Net trained {cfg.train.steps} steps, VAE {cfg.vae.steps} "
                  f"steps; sampler {cfg.sample.sampler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance}; "
                  f"{REAL_IMAGES} images, each from a random test tile's condition text.",
                  split_note(ws, split)],
    }
    return finish_report(results, report_dir)


def finish_report(results: dict, report_dir: Path) -> Path:
    from .report import write_report

    path = write_report(results, report_dir)
    write_json(report_dir / "results.json", results)
    info(f"report: {path}")
    return path


def stage_rows(records: dict, order: Sequence[str]) -> list[dict]:
    """The runner's stage records as report rows, in pipeline order."""
    rows = []
    for name in [n for n in order if n in records]:
        r = records[name]
        rows.append({"name": name, "status": r.status, "wall_time_s": r.wall_time_s, "cpu_time_s": r.cpu_time_s,
                     "rss_peak_bytes": r.rss_peak_bytes})
    return rows


def report_loss(run_dir: Path, report_dir: Path) -> Path | None:
    from .report import plot_loss_curve

    loss_csv = RunFolder(run_dir).loss_log
    return plot_loss_curve(loss_csv, report_dir / "loss.png") if loss_csv.exists() else None


# ---- real data ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class RealData:
    name: str
    description: str
    source: Path
    kind: str                       # "descriptor" | "class"
    overrides: tuple[str, ...]
    explanation: str
    field: str | None = None
    grid_values: tuple[str, ...] = ()


def real_data() -> RealData | None:
    """Real H&E from the data registry (its local mirror), or None: then the demo uses the built-in sample."""
    slide = registry_path(CMU1)
    if slide is None:
        return None
    return RealData(
        name="cmu1", source=slide, kind="descriptor", field="nuclei", grid_values=("low", "high"),
        description=f"CMU-1-Small-Region.svs (real H&E, OpenSlide test data, CC0), {slide}; tiles left of a "
                    "vertical line train, right of it test",
        overrides=(f"text.template='{DESCRIPTOR_TEMPLATE}'", "text.missing_summary=empty"),
        explanation="Each tile's condition text names its own nuclei density and stroma share as low/medium/high "
                    "(quantile bins of the training tiles). Each image is generated from a random test tile's text; "
                    "its nuclei density is then measured with the same descriptor. Fidelity: Spearman correlation "
                    "of the requested level with the measured density; the control pairs the same images with "
                    "shuffled requests (a generator that ignored the text scores about 0 either way). Reference: "
                    "the real test tiles against their own levels (the attainable maximum).")


def registry_path(name: str) -> Path | None:
    """A real-data file through the data registry (its mirror, cache or upstream URL, sha256 checked);
    None when it cannot be had here."""
    from .. import datasets

    try:
        return datasets.fetch(name)
    except datasets.DataUnavailable as exc:
        info(f"demo: no real H&E ({exc}); using the built-in sample")
        return None


def is_smoke(cfg: HistoSynthConfig) -> bool:
    import torch

    return cfg.preset == "tiny-cpu" or not torch.cuda.is_available()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"


def test_tile_ids(ws: Workspace) -> list[int]:
    index = read_index(ws)
    return index.loc[index["split"] == "test", "tile_id"].tolist()


def split_note(ws: Workspace, region: dict | None = None) -> str:
    index = read_index(ws)
    if region:
        return (f"Region split (one slide, so no case can be held out): {region['rule']}; "
                f"train {region['train']} tiles, test {region['test']} tiles.")
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
    loss_csv = RunFolder(run_dir).loss_log
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
