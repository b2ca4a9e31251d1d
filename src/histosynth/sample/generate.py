"""`histosynth sample`: a run's images for given prompts or for test-split reports, reproducibly.

Image i gets seed `seed + i`, so a sample folder is the same whatever the batch size, and an
interrupted run resumes: the folder's status record (histosynth.status, `status.json`, one unit per
image) keeps the images made from the same prompt, seed, checkpoint and sampler settings; an image
made from other ones is generated again, and the run says so. A folder of an older histosynth (no
record) is judged once by the PNGs' provenance chunks (prompt, seed, checkpoint) and then recorded.
Every PNG says in its metadata that it is synthetic and where it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import __version__, distributed
from ..config import ConfigError, HistoSynthConfig, SampleConfig, SummariesConfig, load_config, preset_dict
from ..console import HistosynthError, info, track
from ..fileio import read_json, write_text
from ..imageio import contact_sheet, load_rgb, png_metadata, save_png
from ..manifest import recording
from ..status import STATUS_FILE, WorkLog, inputs_hash
from ..runfolder import SAMPLE_METADATA
from ..results import SampleResult
from ..runfolder import Condition, RunFolder

METADATA_NAME = SAMPLE_METADATA
SHEET_NAME = "contact_sheet.png"
SHEET_MAX = 64   # images on the contact sheet
# command-line option -> sample config field; each is validated by the config's own rules
SAMPLE_OPTIONS = {"sampler": "sampler", "steps": "steps", "guidance": "guidance", "eta": "eta", "seed": "seed",
                  "batch": "batch_size"}
RUN_SECTIONS_FIXED = ("slides", "text", "vae", "unet", "diffusion")  # what the run's weights were made with


def sample_run(
    run_dir: str | Path,
    prompts: list[str] | None,
    n: int,
    sampler: str | None = None,      # "ddim" | "dpmpp"; None: the run's preset
    steps: int | None = None,
    guidance: float | None = None,   # classifier-free guidance scale
    eta: float | None = None,        # DDIM noise
    seed: int | None = None,         # image i gets seed + i
    batch_size: int | None = None,
    from_summaries: bool = False,    # condition on the reports of `split` tiles instead of `prompts`
    split: str = "test",
    out_dir: str | Path | None = None,
    budget: int | None = None,       # only for runs that record no summary budget (histosynth 0.1)
    workspace: str | Path | None = None,  # summaries and tiles (default: the run's source workspace)
    height: int | None = None,       # px, a multiple of the tile size; None: one tile
    width: int | None = None,
    config: HistoSynthConfig | None = None,  # resolved config (default: the run's own)
) -> Path:
    """Generate `n` images; returns the folder with PNGs, metadata.jsonl and contact_sheet.png.

    Every option is checked before anything is loaded or written."""
    run = RunFolder(run_dir).require()
    cfg = config or run.read_config()
    s = sample_settings(cfg.sample, sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=seed,
                        batch=batch_size)
    if n < 1:
        raise ConfigError(f"--n {n}: at least one image")
    tile = run_tile_size(run)
    size = {"height": check_size("--height", height, tile), "width": check_size("--width", width, tile)}
    condition = run.read_condition()
    if from_summaries:
        ws = run_workspace(run, condition, workspace)
        budget = run_budget(run, condition, budget)
        conditions, source = summary_conditions(ws, condition, n, split, s.seed, budget)
    elif prompts:
        conditions = [{"prompt": prompts[i % len(prompts)]} for i in range(n)]
        source = {"kind": "prompts", "n_prompts": len(prompts)}
    else:
        raise HistosynthError("sample: give --prompts FILE or --from-summaries")
    large = size["height"] is not None or size["width"] is not None
    size = {k: v or tile for k, v in size.items()}
    tag = (f"{s.sampler}-{s.steps}steps-g{s.guidance:g}-eta{s.eta:g}-seed{s.seed}" + (f"-{split}" if from_summaries else "")
           + (f"-{size['height']}x{size['width']}" if large else ""))
    out = Path(out_dir) if out_dir else run.samples_path(tag)

    pipe = load_quietly(run, s.sampler)
    pipe.set_progress_bar_config(disable=True)  # one bar over the batches instead
    common = dict(sampler=s.sampler, steps=s.steps, guidance=s.guidance, eta=s.eta,
                  checkpoint_hash=pipe.checkpoint_hash, **(size if large else {}))
    records = [{"file": f"{i:05d}.png", "index": i, "seed": s.seed + i, **cond, **common}
               for i, cond in enumerate(conditions)]
    with distributed.on_main(recording, "sample", out, config=cfg, seeds={"seed": s.seed}) as manifest:
        manifest.inputs[str(run.sampling_unet_dir())] = pipe.checkpoint_hash
        distributed.barrier()  # every rank sees the same images on disk before splitting the rest
        log = WorkLog(out / STATUS_FILE)
        todo = images_to_make(out, records, log)
        batches = [todo[i:i + s.batch_size] for i in range(0, len(todo), s.batch_size)]
        mine = [b for _, b in distributed.my_share(batches)]  # under a launcher: this rank's whole batches
        for batch in track(mine, f"sampling {sum(map(len, mine))} images ({s.sampler}, {s.steps} steps)"):
            images = pipe(prompt=[r["prompt"] for r in batch], seed=[r["seed"] for r in batch],
                          num_inference_steps=s.steps, guidance_scale=s.guidance, eta=s.eta, output_type="np",
                          height=size["height"], width=size["width"]).images
            for record, image in zip(batch, images):
                save_png(out / record["file"], image, provenance(record, run))
                log.mark(record["file"], image_inputs(record), "done", save=False)
            log.save()  # per batch: a kill -9 loses at most the batch in flight
        distributed.barrier()  # every rank's images are written; rank 0 writes the index
        if not distributed.is_main():
            return out
        write_text(out / METADATA_NAME, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
        sheet = [load_rgb(out / r["file"]) for r in records[:SHEET_MAX]]
        save_png(out / SHEET_NAME, contact_sheet(sheet), {"synthetic": "true", "generator": f"histosynth {__version__}"})
        SampleResult(run=str(run.path), n=len(records), source=source).save(out)
        manifest.results.update(n_images=len(records), generated=len(todo), source=source, **common,
                                seed=s.seed, batch_size=s.batch_size, from_summaries=from_summaries,
                                split=split if from_summaries else None)
    info(f"wrote {len(records)} images to {out}")
    return out


def load_quietly(run: RunFolder, sampler: str):
    """The run's pipeline without diffusers' component-loading bar (the command has its own)."""
    from diffusers.utils import logging as diffusers_logging

    from .pipeline import HistoSynthPipeline

    shown = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        return HistoSynthPipeline.from_pretrained(run.path, sampler=sampler)
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()


def sample_settings(base: SampleConfig, **options) -> SampleConfig:
    """The run's sampling defaults with the given options, each checked by SampleConfig's rules;
    a bad one is a ConfigError naming the option (exit 2)."""
    data = base.model_dump()
    for option, value in options.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{option} {value}: must be a finite number")
        try:
            SampleConfig.model_validate({**data, SAMPLE_OPTIONS[option]: value})
        except ValueError as exc:
            msg = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise ConfigError(f"--{option} {value}: {msg}") from None
        data[SAMPLE_OPTIONS[option]] = value
    return SampleConfig.model_validate(data)


def run_tile_size(run: RunFolder) -> int:
    """Edge in px of the images the run's U-Net makes in one window (from the models' configs)."""
    from diffusers.utils import CONFIG_NAME  # every diffusers model folder's config file

    unet = read_json(run.sampling_unet_dir() / CONFIG_NAME)
    vae = read_json(run.vae_dir / CONFIG_NAME)
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def check_size(option: str, value: int | None, tile: int) -> int | None:
    if value is not None and (value < tile or value % tile):
        raise ConfigError(f"{option} {value}: must be a multiple of the run's tile size {tile} px")
    return value


def resolve_config(run: RunFolder, preset: str | None, file: str | Path | None, overrides: list[str]) -> HistoSynthConfig:
    """The run's recorded config; `--preset` takes the sample section from that preset instead, and
    `--config`/`--set` may change the sample section only (the rest is what the weights were made with)."""
    recorded = run.read_config()
    data = recorded.model_dump(mode="json")
    if preset is not None:
        data["sample"] = SampleConfig.model_validate(preset_dict(preset).get("sample", {})).model_dump(mode="json")
    cfg = load_config(base=data, file=file, overrides=overrides)
    for section in RUN_SECTIONS_FIXED:
        if getattr(cfg, section) != getattr(recorded, section):
            raise ConfigError(f"{file or '--set'}: {section}: fixed by the run {run.path} (sample changes only "
                              f"the sample section)")
    return cfg


def provenance(record: dict, run: RunFolder | str | Path) -> dict[str, str]:
    """PNG text chunks: marks the image as synthetic so it is never mistaken for a real patch."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    meta = {"synthetic": "true", "generator": f"histosynth {__version__}", "run": run.name}
    for key in ("checkpoint_hash", "prompt", "seed", "sampler", "steps", "guidance", "eta", "tile_id", "case_id",
                "height", "width"):
        if record.get(key) is not None:
            meta[key] = str(record[key])
    source = run.source_checkpoint()  # weights imported from elsewhere (convert-pathldm) are named
    if source:
        meta["source_checkpoint"] = f"{source.get('file')} sha256:{source.get('sha256')}"
    return meta


def run_workspace(run: RunFolder, condition: Condition, workspace: str | Path | None):
    """The workspace whose summaries condition the images: --workspace, else the one the run was trained on."""
    from ..workspace import Workspace

    root = workspace or condition.source_workspace
    if root is None:
        raise HistosynthError(f"{run.path}: the run records no source workspace; pass --workspace")
    if not Path(root).is_dir():
        raise HistosynthError(f"{root}: workspace not found (the run's source workspace); pass --workspace")
    return Workspace(root)


def run_budget(run: RunFolder, condition: Condition, budget: int | None) -> int:
    """The summary budget the run was trained with: its condition record's (the only source)."""
    if budget is not None:
        try:
            SummariesConfig.model_validate({"budget": budget})
        except ValueError as exc:
            raise ConfigError(f"--budget {budget}: {exc.errors()[0]['msg']}") from None
    if condition.budget is None:
        if budget is None:
            raise HistosynthError(f"{run.condition_path}: the run records no summary budget; pass --budget")
        return budget
    if budget is not None and budget != condition.budget:
        raise ConfigError(f"--budget {budget}: the run was trained at budget {condition.budget}")
    return int(condition.budget)


def summary_conditions(ws, condition: Condition, n: int, split: str, seed: int,
                       budget: int) -> tuple[list[dict], dict]:
    """One condition text per sampled `split` tile: its case's summary and its binned scores."""
    import pandas as pd

    from ..text.condition import tile_condition_text

    summaries = pd.read_parquet(ws.require(ws.summaries_path(budget), f"summarize --budget {budget}"))
    tiles = pd.read_parquet(ws.require(ws.tile_index_path, "tile"))
    tiles = tiles[tiles["split"] == split].merge(summaries[["case_id", "summary"]], on="case_id", how="inner")
    if tiles.empty:
        raise HistosynthError(f"{ws.tile_index_path}: no {split} tiles with a summary at budget {budget}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(tiles), size=n, replace=n > len(tiles))
    conditions = []
    for row in tiles.iloc[np.sort(rows)].itertuples(index=False):
        text = tile_condition_text(row, condition.template, row.summary, list(condition.levels))
        conditions.append({"prompt": text, "tile_id": int(row.tile_id), "case_id": row.case_id, "split": split})
    source = {"kind": "summaries", "workspace": str(ws.root), "split": split, "budget": budget,
              "n_tiles_available": int(len(tiles)), "n_cases": int(tiles["case_id"].nunique())}
    return conditions, source


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (.txt) or a "prompt" field per line (.jsonl); blank lines are skipped."""
    path = Path(path)
    if not path.exists():
        raise HistosynthError(f"{path}: prompts file not found")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        try:
            prompts = [json.loads(line)["prompt"] for line in lines]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise HistosynthError(f"{path}: every line must be a JSON object with a 'prompt'") from None
    else:
        prompts = [line.strip() for line in lines]
    if not prompts:
        raise HistosynthError(f"{path}: no prompts")
    return prompts


def read_metadata(folder: str | Path) -> list[dict]:
    path = Path(folder) / METADATA_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


PIXEL_KEYS = ("prompt", "seed", "checkpoint_hash", "sampler", "steps", "guidance", "eta", "height", "width")


def image_inputs(record: dict) -> str:
    """What an image's pixels are made from (its status unit's inputs)."""
    return inputs_hash(**{k: record.get(k) for k in PIXEL_KEYS})


def images_to_make(out: Path, records: list[dict], log: WorkLog) -> list[dict]:
    """The records whose image is missing or was made from other inputs (said so); the rest are kept."""
    todo, changed, migrated = [], 0, 0
    for record in records:
        unit, key = record["file"], image_inputs(record)
        if not (out / unit).exists():
            todo.append(record)
        elif log.done(unit, key):
            continue
        elif log.get(unit) is None and _already_written(out / unit, record):
            log.mark(unit, key, "done", save=False)   # an older folder: judged by provenance once, recorded
            migrated += 1
        else:
            todo.append(record)
            changed += 1
    if migrated:
        log.save()
    if changed:
        info(f"{out}: {changed} images were made from another prompt, seed, checkpoint or sampler setting; "
             f"generating them again")
    if len(todo) < len(records):
        info(f"resuming: {len(records) - len(todo)} of {len(records)} images already written")
    return todo


def _already_written(path: Path, record: dict) -> bool:
    if not path.exists():
        return False
    meta = png_metadata(path)
    return (meta.get("seed") == str(record["seed"]) and meta.get("prompt") == record["prompt"]
            and meta.get("checkpoint_hash") == str(record["checkpoint_hash"]))
