"""One pipeline runner: the stages in order, each skipped when its result is complete.

The demo, the ablation grid and the conditioning check all run the same chain

    sample-data -> tile -> reports -> summarize -> embed -> train-vae -> encode -> train -> sample -> evaluate

through this module instead of wiring it by hand. API (the whole of it):

    from histosynth.experiments.runner import Pipeline, SampleSpec

    pipe = Pipeline(ws, cfg, slides=[...], reports="reports.csv")   # or sample_data=OUT/"sample"
    records = pipe.run(stages=None,             # None: all; or a list of STAGES names, run in STAGES order
                       budget=None,             # summary budget; None: cfg.summaries.budget
                       run_name="main",         # WS/runs/<run_name>
                       sample=SampleSpec(n=32, out_dir=OUT/"samples"),  # what `sample` generates
                       eval_dir=OUT/"eval")     # where `evaluate` writes eval.json
    records["train"].status                     # "ran" | "resumed"; .wall_time_s, .rss_peak_bytes, .output
    pipe.output("sample")                       # a stage's output path (after run)

Completeness: every stage has a fingerprint, `inputs_hash` of its own config section(s), its
parameters and the fingerprints of the stages it reads from (so a changed VAE redoes encode, train,
sample and evaluate, but not embed). The runner's status record (`histosynth.status.WorkLog` at
`ws.pipeline_status_path`) holds, per stage unit, that fingerprint, the output path and the stage's
time and peak memory; a stage whose record is `done` with the same fingerprint and whose output
still exists is skipped. Within a stage, the stage's own resume (tiles per slide, summaries per
case, shards, checkpoints) still applies, so an interrupted stage continues where it stopped.

Training can run in its own process (`Pipeline(..., train_process=TrainProcess(threads=1))`), so
that its peak memory is its own: the ablation grid does this for every cell.

Every call into a stage's module is in one of the `_run_<stage>` adapters below (the only place
to re-point when a stage's signature changes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import HistoSynthConfig, to_yaml
from ..console import HistosynthError, info
from ..fileio import quick_hash, read_json, write_text
from ..status import WorkLog, inputs_hash
from ..workspace import Workspace

STAGES = ("sample-data", "tile", "reports", "summarize", "embed", "train-vae", "encode", "train", "sample",
          "evaluate")
# Which config sections and which earlier stages each stage's result depends on.
CONFIG_OF = {
    "sample-data": (), "tile": ("slides", "split"), "reports": ("reports",),
    "summarize": ("summaries", "text"),   # the budget is counted in the text encoder's tokenizer
    "embed": ("text",), "train-vae": ("vae",), "encode": ("vae",),
    "train": ("unet", "diffusion", "train", "text"), "sample": ("sample",), "evaluate": ("evaluate",),
}
UPSTREAM = {
    "sample-data": (), "tile": ("sample-data",), "reports": ("tile", "sample-data"), "summarize": ("reports",),
    "embed": ("summarize", "tile"), "train-vae": ("tile",), "encode": ("train-vae", "tile"),
    "train": ("embed", "encode"), "sample": ("train",), "evaluate": ("sample",),
}


@dataclass
class SampleSpec:
    """What the `sample` stage generates: n images conditioned on the `split` tiles' texts, or on prompts."""

    n: int
    out_dir: Path | None = None             # None: the run's samples/ folder
    seed: int | None = None                 # None: cfg.sample.seed
    split: str = "test"
    prompts: list[str] | None = None        # given: condition on these instead of the split's summaries


@dataclass
class TrainProcess:
    """Train in a child process (`histosynth train`) so the run's peak memory is its own."""

    threads: int = 1
    config_file: Path | None = None         # the config the child reads; None: written next to the status record


@dataclass
class StageRecord:
    name: str
    unit: str
    status: str                             # "ran" | "resumed"
    output: str | None = None
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    rss_peak_bytes: int = 0
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """The stages of one workspace; `run` does what is missing and records what it did."""

    def __init__(self, ws: Workspace, cfg: HistoSynthConfig, *, slides: Sequence[str | Path] | None = None,
                 reports: str | Path | None = None, sample_data: str | Path | None = None,
                 train_process: TrainProcess | None = None):
        if sample_data is not None and (slides is not None or reports is not None):
            raise HistosynthError("pipeline: give slides and reports, or sample_data (the built-in sample), not both")
        self.ws, self.cfg = ws, cfg
        self.slides = [Path(s) for s in slides] if slides is not None else None
        self.reports = Path(reports) if reports is not None else None
        self.sample_data = Path(sample_data) if sample_data is not None else None
        self.train_process = train_process
        self.log = WorkLog(ws.pipeline_status_path)
        self.fingerprints: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.params: dict[str, Any] = {}

    # ---- public ------------------------------------------------------------------------------
    def run(self, stages: Sequence[str] | None = None, budget: int | None = None, run_name: str = "main",
            sample: SampleSpec | None = None, eval_dir: str | Path | None = None,
            evaluate_options: dict[str, Any] | None = None) -> dict[str, StageRecord]:
        wanted = list(STAGES) if stages is None else list(stages)
        unknown = [s for s in wanted if s not in STAGES]
        if unknown:
            raise HistosynthError(f"pipeline: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
        if "sample-data" in wanted and self.sample_data is None:
            wanted.remove("sample-data")
        self.params = {"budget": self.cfg.summaries.budget if budget is None else int(budget),
                       "run_name": run_name, "sample": sample, "eval_dir": Path(eval_dir) if eval_dir else None,
                       "evaluate_options": dict(evaluate_options or {})}
        records = {}
        for name in STAGES:
            if name in wanted:
                records[name] = self._stage(name)
        return records

    def output(self, stage: str) -> Path:
        if stage not in self.outputs:
            raise HistosynthError(f"pipeline: stage {stage} has not run in this pipeline")
        return Path(self.outputs[stage])

    # ---- bookkeeping -------------------------------------------------------------------------
    def unit(self, name: str) -> str:
        """The status-record key: stages per budget or per run have one record each."""
        p = self.params
        # One unit per output location: a second config writing the same file must redo the stage.
        if name == "summarize":
            return f"summarize:budget-{p['budget']}"
        if name == "embed":
            return f"embed:budget-{p['budget']}:{self.cfg.text.encoder}"
        if name == "train":
            return f"train:{p['run_name']}"
        if name in ("sample", "evaluate"):
            return f"{name}:{p['run_name']}:{self._sample_dir()}"
        return name

    def fingerprint(self, name: str) -> str:
        parts: dict[str, Any] = {"stage": name}
        for section in CONFIG_OF[name]:
            part = getattr(self.cfg, section, None)
            parts[section] = part.model_dump() if hasattr(part, "model_dump") else part
        for up in UPSTREAM[name]:
            parts[f"after:{up}"] = self._upstream_fingerprint(up)
        parts.update(self._stage_params(name))
        return inputs_hash(**parts)

    def _upstream_fingerprint(self, name: str) -> str | None:
        """An earlier stage's fingerprint: this run's, or the one recorded when it last ran."""
        if name in self.fingerprints:
            return self.fingerprints[name]
        status = self.log.get(self.unit(name))
        return status.inputs if status is not None else None

    def _stage_params(self, name: str) -> dict[str, Any]:
        p = self.params
        if name == "sample-data":
            return {"out": str(self.sample_data)}
        if name == "tile":
            return {"slides": [f"{s}:{_identity(s)}" for s in self.slides or []]}
        if name == "reports":
            return {"reports": f"{self.reports}:{_identity(self.reports)}" if self.reports else None}
        if name in ("summarize", "embed", "train"):
            return {"budget": p["budget"], **({"run_name": p["run_name"]} if name == "train" else {})}
        if name == "sample":
            spec = p["sample"]
            return {"sample": asdict(spec) if spec else None}
        if name == "evaluate":
            return {"eval_dir": str(self._eval_dir()), "options": p["evaluate_options"]}
        return {}

    def _stage(self, name: str) -> StageRecord:
        from ..manifest import PeakMemory

        unit, key = self.unit(name), self.fingerprint(name)
        self.fingerprints[name] = key
        status = self.log.get(unit)
        if (status is not None and status.state == "done" and status.inputs == key
                and _exists(status.output)):
            out = status.output if isinstance(status.output, dict) else {}
            info(f"pipeline: {name}: finished before with the same inputs, skipped")
            self.outputs[name] = out.get("path")
            if name == "sample-data":
                _use_sample(self, read_json(self.sample_data / "sample.json"))
            return StageRecord(**{**out.get("record", {}), "status": "resumed"})
        if self.log.changed(unit, key):
            info(f"pipeline: {name}: its inputs changed since it last ran; redoing it")
        info(f"pipeline: {name} ...")
        self.log.mark(unit, key, "running")
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            with PeakMemory() as memory:
                path, extra = ADAPTERS[name](self)
        except BaseException as exc:
            self.log.mark(unit, key, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        record = StageRecord(name=name, unit=unit, status="ran", output=str(path) if path else None,
                             wall_time_s=round(time.perf_counter() - t0, 2),
                             cpu_time_s=round(time.process_time() - cpu0, 2),
                             rss_peak_bytes=int(memory.summary().get("rss_peak_bytes", 0)), fingerprint=key,
                             extra=extra or {})
        self.outputs[name] = record.output
        self.log.mark(unit, key, "done", output={"path": record.output, "record": asdict(record)})
        info(f"pipeline: {name}: {record.wall_time_s:.1f} s")
        return record

    def _sample_dir(self) -> Path:
        spec: SampleSpec | None = self.params.get("sample")
        if spec is not None and spec.out_dir is not None:
            return Path(spec.out_dir)
        return self.ws.run_dir(self.params["run_name"]) / "samples" / "pipeline"

    def _eval_dir(self) -> Path:
        return self.params.get("eval_dir") or self._sample_dir().parent / f"{self._sample_dir().name}-eval"


def _identity(path: Path | None) -> str:
    """Cheap identity of an input file or folder (size and sampled-content hash; folders: their files)."""
    if path is None or not Path(path).exists():
        return "missing"
    path = Path(path)
    if path.is_dir():
        return inputs_hash(**{str(p.relative_to(path)): quick_hash(p) for p in sorted(path.rglob("*")) if p.is_file()})
    return quick_hash(path)


def _exists(output: Any) -> bool:
    path = output.get("path") if isinstance(output, dict) else None
    return path is None or Path(path).exists()


# ---- adapters: the only calls into other stages' modules ----------------------------------------
def _run_sample_data(p: Pipeline):
    from ..sample_data import make_sample

    _use_sample(p, make_sample(p.sample_data))
    return p.sample_data / "sample.json", {}


def _use_sample(p: Pipeline, sample: dict) -> None:
    p.slides, p.reports = [Path(s) for s in sample["slides"]], Path(sample["reports"])


def _run_tile(p: Pipeline):
    from ..slides.tiler import tile_slides

    if not p.slides:
        raise HistosynthError("pipeline: tile needs slides (Pipeline(slides=...) or sample_data=...)")
    return p.ws.tile_index_path, {"result": _jsonable(tile_slides(p.ws, p.cfg, p.slides))}


def _run_reports(p: Pipeline):
    from ..reports.ingest import ingest_reports

    if p.reports is None:
        raise HistosynthError("pipeline: reports needs a reports file (Pipeline(reports=...) or sample_data=...)")
    return p.ws.reports_path, {"result": _jsonable(ingest_reports(p.ws, p.cfg, p.reports))}


def _run_summarize(p: Pipeline):
    from ..reports.summarize import summarize_workspace

    summarize_workspace(p.ws, p.cfg, p.params["budget"])
    return p.ws.summaries_path(p.params["budget"]), {}


def _run_embed(p: Pipeline):
    from ..text.embed import embed_workspace

    return embed_workspace(p.ws, p.cfg, p.params["budget"]), {}


def _run_train_vae(p: Pipeline):
    from ..latents.vae import train_vae

    return train_vae(p.ws, p.cfg), {}


def _run_encode(p: Pipeline):
    from ..latents.encode import encode_workspace

    return encode_workspace(p.ws, p.cfg), {}


def _run_train(p: Pipeline):
    budget, name = p.params["budget"], p.params["run_name"]
    if p.train_process is None:
        from ..train.trainer import train

        return train(p.ws, p.cfg, budget, run_name=name), {}
    return train_in_subprocess(p.ws, p.cfg, budget, name, p.train_process), {}


def _run_sample(p: Pipeline):
    from ..sample.generate import sample_run

    spec: SampleSpec | None = p.params["sample"]
    if spec is None:
        raise HistosynthError("pipeline: sample needs a SampleSpec (how many images, from which texts)")
    seed = p.cfg.sample.seed if spec.seed is None else spec.seed
    run_dir = p.ws.run_dir(p.params["run_name"])
    if spec.prompts:
        out = sample_run(run_dir, prompts=spec.prompts, n=spec.n, seed=seed, out_dir=p._sample_dir())
    else:
        out = sample_run(run_dir, prompts=None, n=spec.n, from_summaries=True, split=spec.split, seed=seed,
                         out_dir=p._sample_dir())
    return out, {}


def _run_evaluate(p: Pipeline):
    from ..evaluate.run import evaluate

    opts = {"inception_weights": p.cfg.evaluate.inception_weights, **p.params["evaluate_options"]}
    split = (p.params["sample"].split if p.params["sample"] else "test")
    out = p._eval_dir()
    evaluate(f"{p.ws.root}:{split}", p._sample_dir(), out, train=f"{p.ws.root}:train", **opts)
    return out / "eval.json", {}


ADAPTERS: dict[str, Callable[[Pipeline], tuple[Any, dict]]] = {
    "sample-data": _run_sample_data, "tile": _run_tile, "reports": _run_reports, "summarize": _run_summarize,
    "embed": _run_embed, "train-vae": _run_train_vae, "encode": _run_encode, "train": _run_train,
    "sample": _run_sample, "evaluate": _run_evaluate,
}


def train_in_subprocess(ws: Workspace, cfg: HistoSynthConfig, budget: int, run_name: str,
                        spec: TrainProcess) -> Path:
    """`histosynth train` in a child process with `spec.threads` torch threads; resumes if interrupted."""
    config_file = spec.config_file or ws.pipeline_status_path.parent / f"train-{run_name}.yaml"
    write_text(config_file, to_yaml(cfg))  # the child reads exactly this config
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "histosynth.cli", "--quiet", "train", "--workspace", str(ws.root),
           "--budget", str(budget), "--config", str(config_file), "--name", run_name]
    info(f"pipeline: train {run_name} in a subprocess ({spec.threads} thread(s))")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise HistosynthError(f"{ws.run_dir(run_name)}: training failed (exit {proc.returncode}): {tail[0]}")
    return ws.run_dir(run_name)


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
