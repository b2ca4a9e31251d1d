"""Conditioning at work on real H&E without reports: the region split of a single slide, the
per-condition grid of real vs generated tiles, and the fidelity figures with their controls.

Used by `benchmarks/quality.py` (CMU-1 with descriptor text, the Kather tiles with class text) and
by the demo. Images are generated the standard way (`sample --from-summaries --split test`: each
image is conditioned on the condition text of a random test tile, whose `tile_id` its metadata
records) and evaluated by `histosynth evaluate`'s weight-free metrics, which read what each image
requested from that tile: its descriptor bins, or its class (`label`). The *condition* shown in
the grid is the tile-index column that made the prompt differ: `level_<field>` or `label`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..console import HistosynthError

DESCRIPTOR_LEVELS = ("low", "medium", "high")
# evaluate's descriptor names for template fields (histosynth.slides.descriptors.TEMPLATE_FIELDS)
FIELD_DESCRIPTOR = {"nuclei": "nuclei_density", "nuclear_area": "nuclear_area", "fat": "fat_fraction",
                    "stroma": "stroma_fraction", "h": "h_fraction", "e": "e_fraction", "tissue": "tissue_fraction"}
WEIGHT_FREE_METRICS = ["fidelity", "descriptors", "c2st", "classes", "stain", "memorization"]
NEUTRAL_REPORT = "H&E tissue."


@dataclass
class Condition:
    """What a prompt requests: a tile-index column and its values (in order; ordinal for descriptors)."""

    kind: str                      # "descriptor" | "class"
    column: str                    # level_<field> or label
    values: list[str] = field(default_factory=list)
    field: str | None = None       # descriptor template field ({nuclei} -> "nuclei")


def descriptor_condition(field_name: str) -> Condition:
    return Condition("descriptor", f"level_{field_name}", list(DESCRIPTOR_LEVELS), field_name)


def class_condition(index) -> Condition:
    if "label" not in index.columns or not index["label"].astype(str).str.len().any():
        raise HistosynthError("tile index: no class labels; tile a folder of class sub-folders to get them")
    return Condition("class", "label", sorted(index["label"].dropna().astype(str).unique()))


# ---- a single slide: hold out a region ------------------------------------------------------------
def region_split(ws, test_share: float = 0.3) -> dict:
    """Tiles whose left edge lies right of a grid line are test, the rest train: whole tiles on each
    side, no pixel shared (overlap 0). One slide is one case, so a case split could hold nothing out.
    The descriptor bins are refitted on the new training tiles."""
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
def write_captions(ws, csv_path: Path) -> Path:
    """A reports file for a workspace without pathology reports, so that `reports`, `summarize` and
    `embed` run as for slides with reports: every case gets one neutral line, which templates
    without {summary} (descriptor words, {label}) never read."""
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


# ---- the grid ---------------------------------------------------------------------------------------
def label_words(label: str) -> str:
    """A class-folder name as a caption for people: "07_ADIPOSE" -> "adipose"."""
    import re

    return re.sub(r"^[\d\W_]+", "", str(label)).replace("_", " ").strip().lower()


def generated_by_value(folder: Path, index, condition: Condition) -> dict[str, list[np.ndarray]]:
    """Generated images grouped by what their prompt requested: the condition of the test tile
    whose text made the prompt (metadata.jsonl `tile_id`)."""
    from ..imageio import load_rgb
    from ..sample.generate import read_metadata

    value_of = index.set_index("tile_id")[condition.column].astype(str)
    groups: dict[str, list[np.ndarray]] = {v: [] for v in condition.values}
    for rec in read_metadata(folder):
        if rec.get("tile_id") is None:
            raise HistosynthError(f"{folder}: {rec['file']} records no tile_id (sample with --from-summaries)")
        groups.setdefault(value_of[int(rec["tile_id"])], []).append(load_rgb(folder / rec["file"]))
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
                   per_side: int = 6, title: str | None = None, label: Callable[[str], str] | None = None) -> Path:
    """Real test tiles vs generated images, one row per requested value."""
    from .report import condition_grid_png

    values = list(values or condition.values)
    fake = generated_by_value(folder, index, condition)
    real = real_by_value(ws, index, condition, per_side)
    name = label or (lambda v: f"{condition.field} {v}")

    rows = [(name(v), real.get(v, []), fake.get(v, [])) for v in values]
    png.parent.mkdir(parents=True, exist_ok=True)
    return condition_grid_png(rows, png, per_side=per_side, title=title)


# ---- fidelity and realism, with their controls ------------------------------------------------------
def evaluate_conditioning(ws, samples: Path, eval_dir: Path, condition: Condition, seed: int = 0) -> dict:
    """`histosynth evaluate` (weight-free metrics) of the generated images against the real test
    tiles, training tiles as the reference; returns the figures of `table_rows`, with the target
    checks. The whole eval.json stays in `eval_dir`."""
    from ..evaluate.run import evaluate

    report = evaluate(f"{ws.root}:test", samples, eval_dir, train=f"{ws.root}:train", metrics=WEIGHT_FREE_METRICS,
                      seed=seed)
    return summarize_eval(report, condition)


def _entry(value, ci=None, **extra) -> dict:
    return {"value": None if value is None else float(value), "ci95": list(ci) if ci else None, **extra}


def summarize_eval(report: dict, condition: Condition) -> dict:
    """The figures that say whether the text steers the images, from an eval.json."""
    m, out = report.get("metrics", {}), {}
    if condition.kind == "descriptor":
        name = FIELD_DESCRIPTOR[condition.field]
        fid = (m.get("fidelity") or {}).get("generated", {}).get(name)
        ref = ((m.get("fidelity") or {}).get("real_reference") or {}).get(name)
        if fid:
            ctrl = fid["shuffled_control"]
            out[f"{name} fidelity (Spearman)"] = _entry(
                fid["spearman"], fid["spearman_ci95"], control=_entry(ctrl["spearman"], ctrl["spearman_ci95"]),
                reference=_entry(ref["spearman"], ref["spearman_ci95"]) if ref else None,
                reference_kind="real test tiles vs their own bins", n=fid["n"],
                requested_counts=fid.get("requested_counts"))
            out[f"{name} bin accuracy"] = _entry(
                fid["bin_accuracy"], fid["bin_accuracy_ci95"],
                control=_entry(ctrl["bin_accuracy"], ctrl["bin_accuracy_ci95"]),
                reference=_entry(ref["bin_accuracy"], ref["bin_accuracy_ci95"]) if ref else None,
                reference_kind="real test tiles", chance=fid.get("chance_bin_accuracy"))
    else:
        cls = m.get("classes")
        if cls:
            gen, ctrl, ceil = cls["generated"], cls["shuffled_control"], cls["real_heldout_ceiling"]
            out["class fidelity (balanced accuracy)"] = _entry(
                gen["balanced_accuracy"], gen["ci95"], control=_entry(ctrl["balanced_accuracy"], ctrl["ci95"]),
                reference=_entry(ceil["balanced_accuracy"], ceil["ci95"]),
                reference_kind="classifier on real held-out tiles (ceiling)", chance=cls["chance"], n=gen["n"],
                confusion=cls.get("confusion_requested_x_predicted"), classes=cls.get("classes"))
            tstr, trtr = cls["train_on_synthetic_test_on_real"], cls["train_on_real_test_on_real"]
            out["train on synthetic, test on real (balanced accuracy)"] = _entry(
                tstr["balanced_accuracy"], tstr["ci95"], reference=_entry(trtr["balanced_accuracy"], trtr["ci95"]),
                reference_kind="train on real", chance=cls["chance"])
    c2st = m.get("c2st")
    if c2st:
        gen, ref = c2st["generated"], c2st.get("real_reference")
        out["C2ST AUROC (real test vs generated)"] = _entry(
            gen["auroc"], gen["ci95"], reference=_entry(ref["auroc"], ref["ci95"]) if ref else None,
            reference_kind="real test vs real train", chance=0.5, n_per_side=gen.get("n_per_side"))
    memo = m.get("memorization")
    if memo:
        out["memorization (near-copy share)"] = _entry(memo.get("near_copy_share"))
    out["targets"] = targets(out, condition)
    if report.get("skipped"):
        out["skipped"] = report["skipped"]
    return out


def targets(figures: dict, condition: Condition) -> dict:
    """The issue's acceptance targets, checked on the figures (None where a figure is missing)."""
    def contains(ci, x):
        return ci is not None and ci[0] <= x <= ci[1]

    if condition.kind == "descriptor":
        f = figures.get(f"{FIELD_DESCRIPTOR[condition.field]} fidelity (Spearman)")
        if not f or f["ci95"] is None:
            return {"met": None, "rule": "Spearman CI lower bound >= 0.5; shuffled control's CI contains 0"}
        return {"met": bool(f["ci95"][0] >= 0.5 and contains(f["control"]["ci95"], 0.0)),
                "rule": "Spearman CI lower bound >= 0.5; shuffled control's CI contains 0"}
    f = figures.get("class fidelity (balanced accuracy)")
    if not f or f["ci95"] is None:
        return {"met": None, "rule": "balanced accuracy CI lower bound > chance; control's CI contains chance"}
    return {"met": bool(f["ci95"][0] > f["chance"] and contains(f["control"]["ci95"], f["chance"])),
            "rule": f"balanced accuracy CI lower bound > {f['chance']:.3f} (chance); control's CI contains chance"}


def table_rows(results: list[dict]) -> list[dict]:
    """One row per figure: generated [CI], control [CI], and the real-data reference."""
    def fmt(entry):
        if not entry or entry.get("value") is None:
            return "n/a"
        ci = entry.get("ci95")
        return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    rows = []
    for r in results:
        for name, entry in (r.get("metrics") or {}).items():
            if name in ("targets", "skipped") or not isinstance(entry, dict):
                continue
            reference = fmt(entry.get("reference"))
            if entry.get("reference_kind") and entry.get("reference"):
                reference += f" ({entry['reference_kind']})"
            if entry.get("chance") is not None:
                reference += f"; chance {entry['chance']:.3f}"
            rows.append({"dataset": r["dataset"], "metric": name, "generated": fmt(entry),
                         "control": fmt(entry.get("control")) if entry.get("control") else "-",
                         "reference": reference})
    return rows
