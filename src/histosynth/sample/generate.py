"""`histosynth sample`: a run's images for given prompts or for test-split reports, reproducibly.

Image i gets seed `seed + i`, so a sample folder is the same whatever the batch size, and an
interrupted run resumes: images already written with the same prompt, seed and checkpoint are kept.
Every PNG says in its metadata that it is synthetic and where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__, distributed
from ..console import HistosynthError, info, track, warn
from ..fileio import read_json, write_text
from ..imageio import contact_sheet, load_rgb, png_metadata, save_png
from ..manifest import recording
from ..schedules import SAMPLERS
from .pipeline import HistoSynthPipeline, TextSettings, run_config

METADATA_NAME = "metadata.jsonl"
SHEET_NAME = "contact_sheet.png"
SHEET_MAX = 64   # images on the contact sheet


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
    budget: int | None = None,       # summary budget when the run does not record it
) -> Path:
    """Generate `n` images; returns the folder with PNGs, metadata.jsonl and contact_sheet.png."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    defaults = cfg.sample
    sampler = sampler or defaults.sampler
    steps = steps or defaults.steps
    guidance = defaults.guidance if guidance is None else guidance
    eta = defaults.eta if eta is None else eta
    seed = defaults.seed if seed is None else seed
    batch_size = batch_size or defaults.batch_size
    if n < 1:
        raise HistosynthError(f"--n {n}: at least one image")
    if sampler not in SAMPLERS:
        raise HistosynthError(f"--sampler {sampler}: choose from {', '.join(SAMPLERS)}")

    pipe = HistoSynthPipeline.from_pretrained(run_dir, sampler=sampler)
    if from_summaries:
        conditions, source = summary_conditions(run_dir, pipe.text_settings, n, split, seed, budget)
    elif prompts:
        conditions = [{"prompt": prompts[i % len(prompts)]} for i in range(n)]
        source = {"kind": "prompts", "n_prompts": len(prompts)}
    else:
        raise HistosynthError("sample: give --prompts FILE or --from-summaries")
    tag = f"{sampler}-{steps}steps-g{guidance:g}-eta{eta:g}-seed{seed}" + (f"-{split}" if from_summaries else "")
    out = Path(out_dir) if out_dir else run_dir / "samples" / tag

    common = dict(sampler=sampler, steps=steps, guidance=guidance, eta=eta, checkpoint_hash=pipe.checkpoint_hash)
    records = [{"file": f"{i:05d}.png", "index": i, "seed": seed + i, **cond, **common}
               for i, cond in enumerate(conditions)]
    with distributed.on_main(recording, "sample", out, config=cfg, seeds={"seed": seed}) as manifest:
        manifest.inputs[str(pipe.unet_dir)] = pipe.checkpoint_hash
        distributed.barrier()  # every rank sees the same images on disk before splitting the rest
        todo = [r for r in records if not _already_written(out / r["file"], r)]
        if len(todo) < len(records):
            info(f"resuming: {len(records) - len(todo)} of {len(records)} images already written")
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        mine = [b for _, b in distributed.my_share(batches)]  # under a launcher: this rank's whole batches
        for batch in track(mine, f"sampling {sum(map(len, mine))} images ({sampler}, {steps} steps)"):
            images = pipe(prompt=[r["prompt"] for r in batch], seed=[r["seed"] for r in batch],
                          num_inference_steps=steps, guidance_scale=guidance, eta=eta, output_type="np").images
            for record, image in zip(batch, images):
                save_png(out / record["file"], image, provenance(record, run_dir))
        distributed.barrier()  # every rank's images are written; rank 0 writes the index
        if not distributed.is_main():
            return out
        write_text(out / METADATA_NAME, "".join(json.dumps(r) + "\n" for r in records))
        sheet = [load_rgb(out / r["file"]) for r in records[:SHEET_MAX]]
        save_png(out / SHEET_NAME, contact_sheet(sheet), {"synthetic": "true", "generator": f"histosynth {__version__}"})
        manifest.results.update(n_images=len(records), generated=len(todo), source=source, **common,
                                seed=seed, batch_size=batch_size, from_summaries=from_summaries,
                                split=split if from_summaries else None)
    info(f"wrote {len(records)} images to {out}")
    return out


def provenance(record: dict, run_dir: Path) -> dict[str, str]:
    """PNG text chunks: marks the image as synthetic so it is never mistaken for a real patch."""
    meta = {"synthetic": "true", "generator": f"histosynth {__version__}", "run": run_dir.name}
    for key in ("checkpoint_hash", "prompt", "seed", "sampler", "steps", "guidance", "eta", "tile_id", "case_id"):
        if record.get(key) is not None:
            meta[key] = str(record[key])
    source = source_checkpoint(run_dir)  # weights imported from elsewhere (convert-pathldm) are named
    if source:
        meta["source_checkpoint"] = f"{source.get('file')} sha256:{source.get('sha256')}"
    return meta


def source_checkpoint(run_dir: Path) -> dict | None:
    index = run_dir / "model_index.json"
    return read_json(index).get("source_checkpoint") if index.exists() else None


def summary_conditions(run_dir: Path, settings: TextSettings, n: int, split: str, seed: int,
                       budget: int | None) -> tuple[list[dict], dict]:
    """One condition text per sampled `split` tile: its case's summary and its binned scores."""
    import pandas as pd

    from ..text.condition import tile_condition_text
    from ..workspace import Workspace

    ws = Workspace(run_dir.parent.parent)  # runs/<name> lives under WS/runs
    budget = run_budget(run_dir, settings) or budget
    if budget is None:
        raise HistosynthError(f"{run_dir}: the run records no summary budget; pass --budget")
    summaries = pd.read_parquet(ws.require(ws.summaries_path(budget), f"summarize --budget {budget}"))
    tiles = pd.read_parquet(ws.require(ws.tile_index_path, "tile"))
    tiles = tiles[tiles["split"] == split].merge(summaries[["case_id", "summary"]], on="case_id", how="inner")
    if tiles.empty:
        raise HistosynthError(f"{ws.tile_index_path}: no {split} tiles with a summary at budget {budget}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(tiles), size=n, replace=n > len(tiles))
    conditions = []
    for row in tiles.iloc[np.sort(rows)].itertuples(index=False):
        text = tile_condition_text(row, settings.template, row.summary, list(settings.levels))
        conditions.append({"prompt": text, "tile_id": int(row.tile_id), "case_id": row.case_id, "split": split})
    source = {"kind": "summaries", "workspace": str(ws.root), "split": split, "budget": budget,
              "n_tiles_available": int(len(tiles)), "n_cases": int(tiles["case_id"].nunique())}
    return conditions, source


def run_budget(run_dir: Path, settings: TextSettings) -> int | None:
    """The summary budget the run trained with: text_encoder.json, else the run's manifest."""
    if settings.budget is not None:
        return int(settings.budget)
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        budget = read_json(manifest).get("results", {}).get("budget")
        if budget is not None:
            return int(budget)
    warn(f"{run_dir}: no budget in text_encoder.json or manifest.json")
    return None


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


def _already_written(path: Path, record: dict) -> bool:
    if not path.exists():
        return False
    meta = png_metadata(path)
    return (meta.get("seed") == str(record["seed"]) and meta.get("prompt") == record["prompt"]
            and meta.get("checkpoint_hash") == str(record["checkpoint_hash"]))
