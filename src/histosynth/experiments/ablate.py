"""The ablation grid: summary budget x text encoder x condition fields x summary content x seed.

    histosynth ablate -w WS --budgets 20,35 --encoders minilm,random-clip --fields summary,summary+tumor-til \
        --contents full,no-type --seeds 0,1 [--grid grid.yaml] [--baseline b35_minilm_summary_full] [--null-cell]

A *cell* is one combination of the non-seed axes; each cell is trained once per seed. Every
(cell, seed) trains in its own process (`histosynth train`, 1-2 threads), so its memory figure is
its own, then samples one image per conditioning tile of the chosen split (the same tiles and the
same sampling noise in every cell: only the model differs) and is evaluated with every metric
`histosynth evaluate` has plus per-image fidelity to the conditioning tile. A (cell, seed) is
resumable: its status record (histosynth.status) in `WS/ablation/status.json` skips it when its
inputs are unchanged; the VAE and latents are shared by all cells (trained once).

Axes
- budgets: summary budgets in tokens;
- encoders: text-encoder registry names ("minilm"), folders (CLIP, PLIP or any CLIP-style folder,
  BERT-family folders), or "random-clip" / "random-bert": randomly initialised towers saved to
  folders under WS/ablation/encoders/. Only MiniLM has real weights offline; random towers check
  the machinery and support no conclusion (the table says so);
- fields: named condition templates (FIELD_TEMPLATES; a YAML `templates:` mapping adds more):
  summary only, summary + tumour/TIL, summary + patch descriptors, descriptors only, and "none"
  (every caption "": conditioning disabled, the grid's negative control);
- contents: what the extractive summary may say (CONTENTS): full, no-type, no-grade,
  no-architecture, type-only. Content cells get their own summaries (recomposed from the report's
  findings, `reports.findings`) in a derived workspace that shares tiles, reports, VAE and latents;
- seeds: training seeds.

The null cell (`--null-cell`, YAML `null_cell: true`): a copy of the baseline cell trained with
other seeds (each seed + NULL_SEED_OFFSET), compared with the baseline like any cell. It differs
from the baseline by training noise only, so it must not be flagged: the grid's negative control.

Statistics (histosynth.experiments.stats): mean ± sd over seeds, bootstrap 95 % intervals over
images; each cell against the baseline by a Wilcoxon signed-rank test paired over prompt x seed
(Holm-corrected) AND a seed-level t-test on per-seed means (seeds are the replicate unit of
training noise); a sentence per axis names the differences outside the noise and the null cell's
verdict. The baseline's seed-vs-seed Wilcoxon rows are kept for information, never a verdict.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ConfigError, HistoSynthConfig
from ..console import HistosynthError, info
from ..fileio import atomic_path, read_json, write_json, write_text
from ..manifest import recording
from ..status import WorkLog, inputs_hash
from ..workspace import Workspace
from . import stats
from .runner import Pipeline, SampleSpec, TrainProcess

FIELD_TEMPLATES = {
    "summary": "{summary}",
    "summary+tumor-til": "{tumor} tumor; {til} til; {summary}",
    "summary+descriptors": "{nuclei} nuclei; {fat} fat; {summary}",
    "descriptors": "{nuclei} nuclei; {fat} fat",
    "none": "",     # conditioning disabled: every caption is the unconditional text
}
# Finding kinds (reports.findings) of each content ablation. "architecture": gland/crypt structure
# and the in-situ growth patterns (DCIS, LCIS); the Nottingham tubule score stays with the grade.
ARCHITECTURE = ("glands", "dcis", "lcis")
CONTENTS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "full": None,
    "no-type": ("drop", ("type",)),
    "no-grade": ("drop", ("grade",)),
    "no-architecture": ("drop", ARCHITECTURE),
    "type-only": ("keep", ("type",)),
}
REAL_OFFLINE_ENCODERS = ("minilm",)
RANDOM_ENCODERS = ("random-clip", "random-bert")
PER_IMAGE = ("prompt_margin", "stain_error")  # per-image fidelity to the conditioning text / tile (lower is better)
CELL_FILE = "cell.json"          # one (cell, seed)'s figures, in WS/ablation/<cell>/seed-<s>/
GRID_FILE = "grid.json"          # the grid's comparisons and sentences, in WS/ablation/
NULL_SEED_OFFSET = 1000          # the null cell trains with seed + 1000: the baseline's recipe, other seeds
NULL_SUFFIX = "_null"            # the null cell's name: the baseline's + this
RANDOM_NOTE = ("Encoders marked 'random' are randomly initialised towers (no weights offline): their cells check "
               "the machinery and support no conclusion about that encoder.")


class GridSpec(BaseModel):
    """The grid, from flags or a YAML file (same names)."""

    model_config = ConfigDict(extra="forbid")
    budgets: list[int] | None = None          # None: the config's summaries.budget
    encoders: list[str] | None = None         # None: the config's text.encoder
    fields: list[str] = ["summary"]
    contents: list[str] = ["full"]
    seeds: list[int] = [0]
    templates: dict[str, str] = {}            # extra named condition templates
    baseline: str | None = None               # a cell name; None: the first value of every axis
    n: int | None = Field(None, ge=2)         # images per (cell, seed); None: one per split tile
    split: str = "test"                       # whose tiles condition the images (and are the real set)
    sample_seed: int = 0                      # the same conditioning tiles and noise in every cell
    threads: int = Field(1, ge=1, le=64)      # torch threads of each training process
    null_cell: bool = False                   # add a copy of the baseline with other seeds: the noise check


@dataclass(frozen=True)
class Cell:
    budget: int
    encoder: str
    fields: str
    content: str
    null: bool = False     # the null cell: the baseline's recipe trained with other seeds

    @property
    def name(self) -> str:
        return f"b{self.budget}_{_slug(self.encoder)}_{self.fields}_{self.content}" + (NULL_SUFFIX if self.null else "")

    def axes(self) -> dict[str, Any]:
        axes = {"budget": self.budget, "encoder": self.encoder, "fields": self.fields, "content": self.content}
        return {**axes, "null": True} if self.null else axes   # ordinary cells keep their resume keys

    def seeds(self, seeds: Sequence[int]) -> list[int]:
        return [s + NULL_SEED_OFFSET for s in seeds] if self.null else list(seeds)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+.-]+", "-", Path(text).name if "/" in text else text).strip("-") or "x"


def load_grid(path: str | Path | None, **flags: Any) -> GridSpec:
    """A YAML grid file with flags on top (a flag given wins); one line on an invalid grid."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the grid ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a grid file must be a mapping of axes")
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{path or 'ablate'}: {where}: {err['msg']}") from None
    templates = {**FIELD_TEMPLATES, **spec.templates}
    for name in spec.fields:
        if name not in templates:
            raise ConfigError(f"--fields {name}: unknown; choose from {', '.join(templates)} or add it under templates:")
    for name in spec.contents:
        if name not in CONTENTS:
            raise ConfigError(f"--contents {name}: unknown; choose from {', '.join(CONTENTS)}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"--seeds {spec.seeds}: each seed once")
    return spec


def grid_cells(spec: GridSpec, cfg: HistoSynthConfig) -> list[Cell]:
    budgets = spec.budgets or [cfg.summaries.budget]
    encoders = spec.encoders or [cfg.text.encoder]
    return [Cell(*combo) for combo in itertools.product(budgets, encoders, spec.fields, spec.contents)]


def baseline_cell(spec: GridSpec, cells: list[Cell]) -> Cell:
    if spec.baseline is None:
        return cells[0]
    for cell in cells:
        if cell.name == spec.baseline:
            return cell
    raise ConfigError(f"--baseline {spec.baseline}: no such cell; cells are {', '.join(c.name for c in cells)}")


def with_null_cell(spec: GridSpec, cells: list[Cell], base: Cell) -> list[Cell]:
    """The grid's cells plus, with `null_cell`, the baseline's copy trained with other seeds."""
    if not spec.null_cell:
        return cells
    if max(spec.seeds) >= NULL_SEED_OFFSET:
        raise ConfigError(f"--null-cell: seeds must be below {NULL_SEED_OFFSET} (the null cell trains with seed + "
                          f"{NULL_SEED_OFFSET})")
    return cells + [Cell(base.budget, base.encoder, base.fields, base.content, null=True)]


# ---- running ------------------------------------------------------------------------------------
def run_grid(ws: Workspace, cfg: HistoSynthConfig, spec: GridSpec, preset: str | None = None,
             overrides: Sequence[str] = ()) -> Path:
    """Run (or resume) every (cell, seed), then write the table, comparisons and plots; returns table.md."""
    out = ws.ablation_dir
    ws.require(ws.tile_index_path, "tile")
    ws.require(ws.reports_path, "reports")
    cells = grid_cells(spec, cfg)
    base = baseline_cell(spec, cells)
    cells = with_null_cell(spec, cells, base)
    log = WorkLog(ws.status_path(out))
    with recording("ablate", out, config=cfg, seeds={f"seed{s}": s for s in spec.seeds}) as manifest:
        manifest.results.update(grid=spec.model_dump(), preset=preset, overrides=list(overrides))
        Pipeline(ws, cfg).run(stages=["train-vae", "encode"])   # one VAE and one latent cache for all cells
        encoders = {e: resolve_encoder(ws, e) for e in {c.encoder for c in cells}}
        populations = prompt_populations(ws)
        rows, images = [], []
        for cell in cells:
            for rank, seed in enumerate(cell.seeds(spec.seeds)):
                row, per_image = run_cell(ws, cfg, spec, cell, seed, encoders[cell.encoder], log, populations)
                rows.append({**row, "seed_rank": rank})
                images.append(per_image.assign(cell=cell.name, seed=seed, seed_rank=rank))
        path = analyse(rows, images, cells, base, spec, encoders, out)
        manifest.results.update(cells=len(cells), runs=len(rows), table=str(path))
    info(f"ablation table: {path}")
    return path


def cell_config(cfg: HistoSynthConfig, spec: GridSpec, cell: Cell, seed: int, encoder_path: str) -> HistoSynthConfig:
    data = cfg.model_dump(mode="json")
    data["summaries"]["budget"] = cell.budget
    data["text"]["encoder"] = encoder_path
    data["text"]["template"] = {**FIELD_TEMPLATES, **spec.templates}[cell.fields]
    data["train"]["seed"] = seed
    return HistoSynthConfig.model_validate(data)


def run_cell(ws: Workspace, cfg: HistoSynthConfig, spec: GridSpec, cell: Cell, seed: int,
             encoder: dict, log: WorkLog, populations: dict):
    """One (cell, seed): embed, train (own process), sample, evaluate, per-image fidelity."""
    import pandas as pd

    folder = ws.ablation_dir / cell.name / f"seed-{seed}"
    cell_cfg = cell_config(cfg, spec, cell, seed, encoder["path"])
    key = inputs_hash(config=cell_cfg.model_dump(mode="json", exclude_defaults=True), n=spec.n, split=spec.split,
                      sample_seed=spec.sample_seed, axes=cell.axes())
    unit = f"{cell.name}/seed-{seed}"
    if log.done(unit, key) and (folder / CELL_FILE).exists() and (folder / "per_image.csv").exists():
        info(f"ablate: {unit}: done before, skipped")
        return read_json(folder / CELL_FILE), pd.read_csv(folder / "per_image.csv")
    log.mark(unit, key, "running")
    cell_ws = ws if cell.content == "full" else content_workspace(ws, cell.content)
    stages = ["summarize", "embed", "train", "sample", "evaluate"]
    if cell.content != "full":
        write_content_summaries(ws, cell_ws, cell_cfg, cell.budget, cell.content)
        stages.remove("summarize")
    n = images_per_cell(cell_ws, spec)
    run_name = f"ablate-{cell.name}-seed-{seed}"
    Pipeline(cell_ws, cell_cfg, train_process=TrainProcess(threads=spec.threads)).run(
        stages=stages, budget=cell.budget, run_name=run_name,
        sample=SampleSpec(n=n, out_dir=folder / "samples", seed=spec.sample_seed, split=spec.split),
        eval_dir=folder / "eval")
    per_image = per_image_fidelity(cell_ws, folder / "samples", populations)
    with atomic_path(folder / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)
    train_results = train_figures(cell_ws.run_dir(run_name))
    row = {"cell": cell.name, **cell.axes(), "seed": seed, "encoder_kind": encoder["kind"], "n_images": n,
           "run": str(cell_ws.run_dir(run_name)),
           **set_metrics(read_json(folder / "eval" / "eval.json")),
           **{f"{m}": float(per_image[m].mean()) for m in PER_IMAGE},
           "peak_train_memory_mib": train_results.get("peak_memory_bytes", math.nan) / 2**20,
           "memory_kind": train_results.get("memory_kind"),
           "step_time_s": train_results.get("step_time_s", math.nan)}
    write_json(folder / CELL_FILE, row)
    log.mark(unit, key, "done", output=str(folder / CELL_FILE))
    return row, per_image


def train_figures(run_dir: Path) -> dict:
    """The run's memory and step-time figures: its typed TrainResult, else (older runs) its manifest."""
    from ..results import TrainResult

    if TrainResult.exists(run_dir):
        return TrainResult.load(run_dir).model_dump()
    from ..runfolder import MANIFEST_FILE

    manifest = run_dir / MANIFEST_FILE
    return read_json(manifest).get("results", {}) if manifest.exists() else {}


def images_per_cell(ws: Workspace, spec: GridSpec) -> int:
    """One image per conditioning tile of the split (capped by --n): no tile drawn twice."""
    from ..slides.index import read_index

    index = read_index(ws)
    available = int((index["split"] == spec.split).sum())
    if available == 0:
        raise HistosynthError(f"{ws.tile_index_path}: no {spec.split}-split tiles to condition on (--split)")
    return min(spec.n, available) if spec.n else available


def set_metrics(scores: dict) -> dict[str, float]:
    """Every numeric metric of an eval.json, flattened ("stain.frechet_hed"); new metrics appear by themselves."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", scores.get("metrics", {}))
    return {f"eval:{k}": v for k, v in flat.items()}


POPULATION_TILES = 256   # real tiles per report group whose mean stands for the group's appearance


def _hed_mean(image):
    """Mean haematoxylin / eosin / DAB optical density of an image (`skimage.color.rgb2hed`)."""
    import numpy as np
    from skimage.color import rgb2hed

    return rgb2hed(np.asarray(image)[..., :3]).reshape(-1, 3).mean(0)


def prompt_populations(ws: Workspace) -> dict:
    """The real appearance each report stands for: mean HED of the tiles of all cases with that report.

    Grouping by report text (not by the cell's summary) keeps the target the same in every cell,
    so cells can be compared image by image; cases with identical reports form one group.
    """
    import numpy as np

    from ..fileio import text_hash
    from ..reports.ingest import read_reports
    from ..slides.index import read_index
    from ..slides.store import TileStore

    group_of = {c: text_hash(t) for c, t in zip(*(read_reports(ws)[k] for k in ("case_id", "text")))}
    index = read_index(ws)
    index = index[index["case_id"].isin(group_of)].assign(group=lambda f: f["case_id"].map(group_of))
    rng, means, rows = np.random.default_rng(0), {}, []
    store = TileStore(ws)
    for group, tiles in index.groupby("group"):
        ids = tiles["tile_id"].to_numpy()
        ids = np.sort(rng.choice(ids, size=min(len(ids), POPULATION_TILES), replace=False))
        hed = np.stack([_hed_mean(t) for t in store.get([int(i) for i in ids])])
        means[group] = hed.mean(0)
        rows.append(hed)
    scale = np.concatenate(rows).std(0) + 1e-6
    return {"group_of": group_of, "means": means, "scale": scale}


def per_image_fidelity(ws: Workspace, samples: Path, populations: dict):
    """Per generated image, how well it matches the text that conditioned it (lower is better).

    prompt_margin: the image's standardised HED distance to its own report group's real tiles minus
    the distance to the nearest other group (negative: closer to its own text's tissue than to any
    other; NaN with a single group). stain_error: HED distance to the very tile whose text
    conditioned it. Weight-free and per image, so cells are compared image by image.
    """
    import numpy as np
    import pandas as pd

    from ..imageio import load_rgb
    from ..sample.generate import read_metadata
    from ..slides.store import TileStore

    records = read_metadata(samples)
    if not records or "tile_id" not in records[0]:
        raise HistosynthError(f"{samples}: per-image fidelity needs images conditioned on tiles (from summaries)")
    real = TileStore(ws).get([int(r["tile_id"]) for r in records])
    means, scale = populations["means"], populations["scale"]
    rows = []
    for record, tile in zip(records, real):
        g = _hed_mean(load_rgb(samples / record["file"]))
        own = populations["group_of"].get(record["case_id"])
        dist = {k: float(np.linalg.norm((g - m) / scale)) for k, m in means.items()}
        others = [d for k, d in dist.items() if k != own]
        margin = dist[own] - min(others) if own in dist and others else math.nan
        rows.append({"index": int(record["index"]), "tile_id": int(record["tile_id"]), "prompt_margin": margin,
                     "stain_error": float(np.linalg.norm(g - _hed_mean(tile)))})
    return pd.DataFrame(rows)


# ---- encoders -----------------------------------------------------------------------------------
def resolve_encoder(ws: Workspace, name: str) -> dict:
    """{"path": what text.encoder gets, "kind": "real" | "random" | "given"}; random towers are made once."""
    if name.lower() in REAL_OFFLINE_ENCODERS:
        return {"path": name, "kind": "real"}
    if name in RANDOM_ENCODERS:
        folder = ws.ablation_dir / "encoders" / name
        if not (folder / "config.json").exists():
            make_random_encoder(name, folder)
        return {"path": str(folder), "kind": "random"}
    if Path(name).is_dir():
        return {"path": str(Path(name).resolve()), "kind": "given"}
    raise ConfigError(f"--encoders {name}: not a registry name ({', '.join(REAL_OFFLINE_ENCODERS + RANDOM_ENCODERS)}) "
                      "nor a local folder")


def make_random_encoder(name: str, folder: Path) -> Path:
    """A randomly initialised text tower saved like a real one (never to be reported as trained)."""
    from ..fileio import atomic_dir

    with atomic_dir(folder) as tmp:
        if name == "random-clip":
            from ..text.testing import save_random_clip

            save_random_clip(tmp, hidden=64, layers=2, heads=4)
        else:  # BERT family: MiniLM's architecture and WordPiece vocabulary, random weights
            import torch
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            from ..tokenizers import minilm_path

            config = AutoConfig.from_pretrained(minilm_path())
            config.num_hidden_layers = 2
            torch.manual_seed(0)
            AutoModel.from_config(config).save_pretrained(tmp)
            AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tmp)
        write_json(Path(tmp) / "histosynth-random-tower.json",
                   {"random": True, "note": "randomly initialised; supports no conclusion about a trained encoder"})
    return folder


# ---- summary content ----------------------------------------------------------------------------
def content_workspace(ws: Workspace, content: str) -> Workspace:
    """A workspace sharing tiles, reports, split, VAE and latents with `ws`, with its own summaries."""
    derived = Workspace(ws.ablation_dir / "content" / content)
    derived.root.mkdir(parents=True, exist_ok=True)
    for src, dst in ((ws.tiles_dir, derived.tiles_dir), (ws.reports_dir, derived.reports_dir),
                     (ws.vae_dir, derived.vae_dir), (ws.latents_dir, derived.latents_dir),
                     (ws.split_path, derived.split_path), (ws.config_path, derived.config_path)):
        if src.exists() and not dst.exists():
            dst.symlink_to(src.resolve())
    return derived


def write_content_summaries(ws: Workspace, derived: Workspace, cfg: HistoSynthConfig, budget: int, content: str):
    """The extractive summary recomposed from the findings this content ablation allows."""
    import pandas as pd

    from ..reports.extractive import compose, render
    from ..reports.findings import find_findings
    from ..reports.ingest import read_reports
    from ..tokenizers import tokenizer_for

    mode, kinds = CONTENTS[content]
    tokenizer = tokenizer_for(cfg)
    rows = []
    reports = read_reports(ws)
    for case_id, text, split in zip(reports.case_id, reports.text, reports.split):
        found = [f for f in find_findings(text) if (f.kind in kinds) == (mode == "keep")]
        parts, _ = compose(found, budget, tokenizer)
        summary = render(parts)   # "" when nothing is left: the unconditional text, not a made-up finding
        rows.append({"case_id": case_id, "budget": budget, "summary": summary, "n_tokens": tokenizer.count(summary),
                     "tokenizer": tokenizer.name, "backend": "extractive", "model": f"content:{content}",
                     "prompt_version": content, "attempts": 1, "status": "ok" if summary else "no-findings",
                     "findings": parts, "split": split})
    path = derived.summaries_path(budget)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    return path


# ---- analysis -----------------------------------------------------------------------------------
def analyse(rows: list[dict], images: list, cells: list[Cell], base: Cell, spec: GridSpec, encoders: dict,
            out: Path) -> Path:
    import pandas as pd

    runs = pd.DataFrame(rows)
    per_image = pd.concat(images, ignore_index=True)
    table = summary_table(runs, per_image, cells)
    comparisons = compare_cells(per_image, cells, base)
    sentences = axis_sentences(comparisons, cells, base, encoders)
    with atomic_path(out / "runs.csv") as tmp:
        runs.to_csv(tmp, index=False)
    with atomic_path(out / "per_image.csv") as tmp:
        per_image.to_csv(tmp, index=False)
    with atomic_path(out / "table.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "comparisons.csv") as tmp:
        comparisons.to_csv(tmp, index=False)
    plots = plot_axes(table, cells, base, out)
    write_json(out / GRID_FILE, {"baseline": base.name, "test": stats.TEST_NAME, "sentences": sentences,
                                     "comparisons": comparisons.to_dict(orient="records"),
                                     "plots": [str(p) for p in plots]})
    path = out / "table.md"
    write_text(path, markdown(table, comparisons, sentences, base, encoders))
    return path


def summary_table(runs, per_image, cells: list[Cell]):
    """One row per cell: mean ± sd over seeds of every metric; bootstrap 95 % interval over images."""
    import pandas as pd

    metric_cols = [c for c in runs if c.startswith("eval:") or c in PER_IMAGE
                   or c in ("peak_train_memory_mib", "step_time_s")]
    out = []
    for cell in cells:
        sub = runs[runs["cell"] == cell.name]
        row: dict[str, Any] = {"cell": cell.name, **cell.axes(), "encoder_kind": sub["encoder_kind"].iloc[0],
                               "n_seeds": int(sub["seed"].nunique()), "n_images": int(sub["n_images"].sum())}
        for col in metric_cols:
            values = pd.to_numeric(sub[col], errors="coerce")
            row[f"{col}_mean"] = float(values.mean())
            row[f"{col}_sd"] = float(values.std(ddof=1)) if values.notna().sum() > 1 else math.nan
        imgs = per_image[per_image["cell"] == cell.name]
        for m in PER_IMAGE:
            row[f"{m}_ci_lo"], row[f"{m}_ci_hi"] = stats.bootstrap_ci(imgs[m].tolist())
        out.append(row)
    return pd.DataFrame(out)


def _paired(per_image, a: str, b: str, metric: str, seed_a: int | None = None, seed_b: int | None = None):
    """Values of cells a and b paired over (prompt index, seed rank); or two seed ranks of one cell."""
    left = per_image[per_image["cell"] == a]
    right = per_image[per_image["cell"] == b]
    if seed_a is not None:
        left, right = left[left["seed_rank"] == seed_a], right[right["seed_rank"] == seed_b]
        on = ["index"]
    else:
        on = ["index", "seed_rank"]
    merged = left.merge(right, on=on, suffixes=("_a", "_b"))
    return merged[f"{metric}_a"].to_numpy(), merged[f"{metric}_b"].to_numpy()


def seed_means(per_image, metric: str) -> dict[str, list[float]]:
    """Per cell, the mean per-image metric of each training seed (the replicate of training noise)."""
    grouped = per_image.groupby(["cell", "seed_rank"])[metric].mean()
    return {cell: grouped.loc[cell].tolist() for cell in grouped.index.get_level_values(0).unique()}


def compare_cells(per_image, cells: list[Cell], base: Cell):
    """Every cell (the null cell too) vs the baseline: per-image Wilcoxon, Holm-corrected over the grid,
    and the seed-level t-test; the baseline's seed-vs-seed Wilcoxon rows are information ("seed-info")."""
    import pandas as pd

    records = []
    ranks = sorted(per_image.loc[per_image["cell"] == base.name, "seed_rank"].unique())
    for metric in PER_IMAGE:
        means = seed_means(per_image, metric)
        sd, df = stats.pooled_seed_sd(means)
        for i, j in itertools.combinations(ranks, 2):   # two models of one recipe: they differ, image by image
            a, b = _paired(per_image, base.name, base.name, metric, i, j)
            records.append({"cell": f"{base.name} seed#{j}", "vs": f"{base.name} seed#{i}", "metric": metric,
                            "kind": "seed-info", **stats.wilcoxon_paired(b, a)})
        for cell in cells:
            if cell == base:
                continue
            a, b = _paired(per_image, cell.name, base.name, metric)
            records.append({"cell": cell.name, "vs": base.name, "metric": metric,
                            "kind": "null" if cell.null else "cell", **stats.wilcoxon_paired(a, b),
                            **stats.seed_level_test(means.get(cell.name, []), means.get(base.name, []), sd, df)})
    table = pd.DataFrame(records)
    if table.empty:
        return table
    verdict = table["kind"] != "seed-info"      # the Holm family: the comparisons that get a verdict
    table["p_holm"] = math.nan
    table.loc[verdict, "p_holm"] = stats.holm(table.loc[verdict, "p"].tolist())
    table["outside_noise"] = [bool(v) and stats.outside_noise(r.p_holm, r.seed_p)
                              for v, r in zip(verdict, table.itertuples())]
    return table


def _only_differs_in(cell: Cell, base: Cell, axis: str) -> bool:
    return all(getattr(cell, a) == getattr(base, a) for a in ("budget", "encoder", "fields", "content") if a != axis)


AXES = ("budget", "encoder", "fields", "content")


def axis_sentences(comparisons, cells: list[Cell], base: Cell, encoders: dict) -> dict[str, str]:
    """Per axis with two or more values: which cells differ from the baseline outside the noise."""
    out = {}
    for axis in AXES:
        along = [c for c in cells if c != base and not c.null and getattr(c, axis) != getattr(base, axis)
                 and _only_differs_in(c, base, axis)]
        if not along:
            continue
        flagged, quiet = [], []
        for cell in along:
            rows = comparisons[(comparisons["cell"] == cell.name) & comparisons["outside_noise"]]
            label = str(getattr(cell, axis))
            if len(rows):
                flagged.append(f"{label} ({', '.join(_evidence(r) for r in rows.itertuples())})")
            else:
                quiet.append(label)
        text = f"{axis} (baseline {getattr(base, axis)}): "
        text += ("outside the noise: " + "; ".join(flagged) + ". ") if flagged else "no difference outside the noise. "
        if quiet:
            text += "Within the noise: " + ", ".join(quiet) + "."
        if axis == "encoder" and any(encoders[c.encoder]["kind"] == "random" for c in along + [base]):
            text += " Random towers: a machinery check, no conclusion about those encoders."
        out[axis] = f"{text.strip()} {noise_sentence(comparisons)}"
    return out


def _evidence(r) -> str:
    seed = "" if math.isnan(r.seed_p) else f", seed-level p={r.seed_p:.2g}"
    return f"{r.metric} {r.median_diff:+.4f} (Holm p={r.p_holm:.2g}{seed})"


def noise_sentence(comparisons) -> str:
    """How training noise was judged: the seed-level df, and the null cell's verdict if there is one."""
    judged = comparisons[comparisons["kind"] != "seed-info"]
    if judged.empty or judged["seed_df"].max() == 0:
        text = f"({stats.ONE_SEED_NOTE}"
    else:
        text = f"(Training noise from {int(judged['seed_df'].max())} seed df"
    null = comparisons[comparisons["kind"] == "null"]
    if len(null):
        text += (f"; noise check, a copy of the baseline with other seeds: "
                 f"{'FLAGGED, so the noise is underestimated' if null['outside_noise'].any() else 'not flagged'}")
    return text + ".)"


def markdown(table, comparisons, sentences: dict, base: Cell, encoders: dict) -> str:
    lines = ["# Ablation grid", "", f"Baseline cell: `{base.name}`. Paired test: {stats.TEST_NAME}; "
             f"seed-level gate: {stats.SEED_TEST_NAME}.", ""]
    if any(e["kind"] == "random" for e in encoders.values()):
        lines += [f"**{RANDOM_NOTE}**", ""]
    cols = [c[:-5] for c in table if c.endswith("_mean") and not _detail(c[:-5])]
    heads = ["cell", "encoder kind", "seeds", "images"] + cols
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, r in table.iterrows():
        cells = [r["cell"], r["encoder_kind"], str(r["n_seeds"]), str(r["n_images"])]
        for c in cols:
            mean, sd = r[f"{c}_mean"], r[f"{c}_sd"]
            text = "n/a" if math.isnan(mean) else f"{mean:.4g}" + ("" if math.isnan(sd) else f" ± {sd:.2g}")
            if c in PER_IMAGE and not math.isnan(r[f"{c}_ci_lo"]):
                text += f" [{r[f'{c}_ci_lo']:.4g}, {r[f'{c}_ci_hi']:.4g}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sd over seeds; [bootstrap 95 % interval over images]; n/a: not computed "
              "(each run's eval/report.md says why); every metric's inputs are in table.csv. prompt_margin: per image, standardised HED distance "
              "to its own report's real tiles minus that to the nearest other report's (negative: the text is "
              "followed); stain_error: HED distance to the conditioning tile (both: lower is better).", "", "## Paired comparisons", "",
              "| cell | vs | metric | pairs | median diff | p | Holm p | seed-level diff | t (df) | seed-level p "
              "| outside noise |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in comparisons.itertuples():
        if r.kind == "seed-info":   # information only: two models of one recipe differ image by image
            lines.append(f"| {r.cell} | {r.vs} | {r.metric} | {r.n_pairs} | {r.median_diff:+.4g} | {r.p:.3g} | "
                         "- | - | - | - | (information) |")
            continue
        seed = ("n/a (one seed) | n/a | n/a" if math.isnan(r.seed_p) else
                f"{r.seed_diff:+.4g} | {r.seed_t:.2f} ({int(r.seed_df)}) | {r.seed_p:.3g}")
        name = f"{r.cell} (null: baseline, other seeds)" if r.kind == "null" else r.cell
        lines.append(f"| {name} | {r.vs} | {r.metric} | {r.n_pairs} | {r.median_diff:+.4g} | {r.p:.3g} | "
                     f"{r.p_holm:.3g} | {seed} | {'yes' if r.outside_noise else 'no'} |")
    lines += ["", f"Outside the noise: Holm p < 0.05 (images differ) and seed-level p < 0.05 ({stats.SEED_TEST_NAME}: "
              "seeds are the replicate unit of training noise). Rows marked (information): the baseline's seeds "
              "compared image by image; two trained models differ, so these are no verdict."]
    lines += ["", "## Per axis", ""] + [f"- {s}" for s in sentences.values()]
    return "\n".join(lines) + "\n"


# Parts of a column name that mark an input, a protocol setting, a reference that does not depend on
# the cell, or a secondary figure: kept in table.csv, left out of table.md so that it stays readable.
DETAIL_PARTS = ("mean_real", "mean_fake", "threshold", "n_train", "train.n", "test_nn", "protocol", "n_per_side",
                "chance", "ceiling", "requested_counts", "real_reference", "_median", ".memorization_near_copy_share",
                "bin_accuracy", "shuffled_control", "train_on_real", "stain.w1_")
DETAIL_SUFFIXES = (".n", ".w1", "near_copies")


def _detail(column: str) -> bool:
    """Columns kept in table.csv but left out of table.md."""
    return any(part in column for part in DETAIL_PARTS) or column.endswith(DETAIL_SUFFIXES)


def plot_axes(table, cells: list[Cell], base: Cell, out: Path) -> list[Path]:
    """axis-<name>.png: per-image metrics (mean, 95 % interval) of the cells along each axis from the baseline."""
    from .report import _pyplot

    plt = _pyplot()
    paths = []
    for axis in AXES:
        along = [base] + [c for c in cells if c != base and not c.null and _only_differs_in(c, base, axis)
                          and getattr(c, axis) != getattr(base, axis)]
        if len(along) < 2:
            continue
        along += [c for c in cells if c.null]   # the noise check beside the axis
        rows = table.set_index("cell").loc[[c.name for c in along]]
        fig, axes = plt.subplots(1, len(PER_IMAGE), figsize=(3.8 * len(PER_IMAGE), 3.2), squeeze=False)
        labels = ["null copy" if c.null else str(getattr(c, axis)) for c in along]
        for ax, metric in zip(axes[0], PER_IMAGE):
            mean = rows[f"{metric}_mean"].to_numpy()
            lo = mean - rows[f"{metric}_ci_lo"].fillna(rows[f"{metric}_mean"]).to_numpy()
            hi = rows[f"{metric}_ci_hi"].fillna(rows[f"{metric}_mean"]).to_numpy() - mean
            ax.errorbar(range(len(labels)), mean, yerr=[lo, hi], marker="o", capsize=3, linestyle="none")
            ax.set(xticks=range(len(labels)), xlabel=axis, ylabel=f"{metric} (95 % CI)")
            ax.set_xticklabels(labels, rotation=20, fontsize=7)
        fig.tight_layout()
        path = out / f"axis-{axis}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
