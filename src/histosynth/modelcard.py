"""The run folder's model card: README.md with YAML metadata, as the Hugging Face Hub reads it.

`write_model_card(run)` is called by whatever finishes a run folder (`train`, `convert-pathldm`,
`HistoSynthPipeline.save_pretrained`); it only reads the run's own records (config, condition,
model index, manifest, evaluation) and never imports a model library. What the run does not
record (the licence of the slides and reports a workspace was built from) is said to be unknown,
never guessed: pass `data` to state it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .fileio import read_json, write_text
from .runfolder import RunFolder

PATHLDM = {
    "name": "PathLDM (Yellapragada et al., WACV 2024), TCGA-BRCA slides and reports",
    "license": "see the distribution terms of the checkpoint; TCGA data: NIH GDC open access",
    "attribution": "S. Yellapragada et al., PathLDM: Text conditioned Latent Diffusion Model for "
                   "Histopathology, WACV 2024; The Cancer Genome Atlas (TCGA-BRCA)",
}
INTENDED_USE = (
    "Research on text-conditioned generation of histopathology patches: data augmentation experiments, "
    "studying what report text conveys about morphology, teaching. Every generated PNG says in its metadata "
    "that it is synthetic."
)
LIMITATIONS = (
    "Not for diagnosis or any clinical decision. Generated tissue can look plausible and be wrong; it reflects "
    "the training slides' sites, stains and scanners only. Small or briefly trained runs produce images that "
    "are not realistic tissue. Near copies of training tiles are possible: check the memorization metric "
    "before sharing images."
)


def write_model_card(run: RunFolder | str | Path, data: list[dict[str, str]] | None = None,
                     metrics: dict[str, Any] | None = None) -> Path:
    """Write RUN/README.md; `data`: [{name, license, attribution}] of the training data when known."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    meta, body = card_fields(run, data, metrics)
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    write_text(run.model_card_path, text)
    return run.model_card_path


def card_fields(run: RunFolder, data: list[dict[str, str]] | None,
                metrics: dict[str, Any] | None) -> tuple[dict, str]:
    config = run.read_config()
    condition = run.read_condition()
    source = run.source_checkpoint()
    data = data or training_data(run, source, condition.source_workspace)
    metrics = metrics if metrics is not None else run_metrics(run)
    meta = {
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["histopathology", "latent-diffusion", "histosynth", "synthetic-data"],
        "license": _one_licence(data),
        "datasets": [d["name"] for d in data],
        "histosynth": {
            "preset": config.preset,
            "text_encoder": condition.encoder,
            "template": condition.template,
            "budget_tokens": condition.budget,
            "context_length": condition.context_length,
            "converted_from": source.get("file") if source else None,
            "source_sha256": source.get("sha256") if source else None,
            "metrics": metrics,
        },
    }
    lines = [
        f"# {run.name}", "",
        "A text-conditioned latent diffusion model of histopathology patches made with histosynth "
        + (f"by converting `{source.get('file')}`." if source else "by `histosynth train`."), "",
        "## Training data", "",
        *[f"- **{d['name']}** — licence: {d['license']}; attribution: {d['attribution']}" for d in data], "",
        "## Settings", "",
        f"- preset `{config.preset}`; tile {config.slides.size} px at {config.slides.mpp} um/px",
        f"- text encoder `{condition.encoder}`, condition template `{condition.template}`, "
        f"summary budget {condition.budget if condition.budget is not None else 'not recorded'} tokens",
        f"- sampling defaults: {config.sample.sampler}, {config.sample.steps} steps, "
        f"guidance {config.sample.guidance}", "",
        "## Metrics", "",
        "```json", json.dumps(metrics, indent=2, sort_keys=True) if metrics else "{} (none recorded)", "```", "",
        "## Intended use", "", INTENDED_USE, "",
        "## Limitations", "", LIMITATIONS, "",
        "## Use", "",
        "```python",
        "from histosynth.sample.pipeline import HistoSynthPipeline",
        f'pipe = HistoSynthPipeline.from_pretrained("{run.name}")',
        'images = pipe(prompt="high tumor; low til; invasive ductal carcinoma", seed=0).images',
        "```", "",
    ]
    return meta, "\n".join(lines)


def training_data(run: RunFolder, source: dict | None, workspace: str | None) -> list[dict[str, str]]:
    """What the run's records say about its data; licences the records do not hold stay unknown."""
    if source:
        return [PATHLDM]
    tiles = train_result(run).get("train_tiles")
    return [{
        "name": f"histosynth workspace {workspace or '(not recorded)'}"
                + (f", {tiles} training tiles" if tiles else ""),
        "license": "unknown (not recorded; state the licence of the slides and reports used)",
        "attribution": "not recorded",
    }]


def train_result(run: RunFolder) -> dict[str, Any]:
    """The run's TrainResult (result.json) as a dict; {} for converted or unfinished runs."""
    from .results import TrainResult

    return TrainResult.load(run.path).model_dump() if TrainResult.exists(run.path) else {}


def run_metrics(run: RunFolder) -> dict[str, Any]:
    """Held-out loss from training and the metrics of the latest evaluation inside the run, if any."""
    out: dict[str, Any] = {}
    results = train_result(run)
    out.update({k: results[k] for k in ("heldout_loss", "heldout_zero_baseline", "steps") if results.get(k) is not None})
    evals = sorted(run.samples_dir.glob("*/eval.json")) + sorted(run.samples_dir.glob("*-eval/eval.json"))
    if evals:
        scores = read_json(evals[-1]).get("metrics", {})
        out["evaluation"] = {k: v for k, v in scores.items() if isinstance(v, (int, float, dict))}
    return out


def _one_licence(data: list[dict[str, str]]) -> str:
    """An SPDX id when all data share one (e.g. CC-BY-4.0); the Hub's "other" otherwise."""
    licences = {d["license"] for d in data}
    only = licences.pop() if len(licences) == 1 else ""
    return only if only and " " not in only else "other"
