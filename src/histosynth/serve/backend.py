"""The app's adapters to the sample and evaluate stages: the only place the app touches them.

Each function is small and uses a stage's public API (`HistoSynthPipeline`, `sample.generate.provenance`,
`imageio.save_png`, `evaluate.memorization`), so a change there means a change here only.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..console import HistosynthError

# Patch descriptors a histologic summary is built from (the builder's choices; free text allows anything).
HISTOLOGIC_TYPES = (
    "invasive ductal carcinoma", "invasive lobular carcinoma", "mixed ductal and lobular carcinoma",
    "mucinous carcinoma", "medullary carcinoma", "metaplastic carcinoma", "ductal carcinoma in situ",
    "normal breast tissue",
)
GRADES = ("", "grade 1", "grade 2", "grade 3")
MAX_IMAGES = 8


# ---- text -------------------------------------------------------------------------------------
def text_settings(run_dir: Path):
    """The run's condition record: template, levels, context length, budget, descriptor bins."""
    from ..runfolder import RunFolder

    return RunFolder(run_dir).read_condition()


def run_tokenizer(run_dir: Path, settings):
    """The tokenizer of the run's text encoder: the named one when known offline, else the run's copy."""
    from ..tokenizers import CLIP_FAMILY, MINILM_NAMES, load_tokenizer

    name = settings.encoder
    local = run_dir / "text_encoder"
    known = name in CLIP_FAMILY or name.lower() in MINILM_NAMES or name.lower().startswith("clip")
    if not known and local.is_dir():
        return load_tokenizer(str(local))
    return load_tokenizer(name)


def token_limit(settings) -> int:
    """Tokens of text the run's encoder reads: its context length less the start and end tokens."""
    return int(settings.context_length) - 2


def template_fields(settings) -> list[str]:
    from ..text.condition import template_fields as fields

    return fields(settings.template)


def build_prompt(settings, histologic_type: str, grade: str, levels: dict[str, str], extra: str = "") -> str:
    """The run's template filled from the builder: the summary from type/grade/notes, score fields from levels."""
    parts = [p.strip() for p in (histologic_type, grade) if p and p.strip()]
    summary = ", ".join(parts) + ("." if parts else "")
    if extra.strip():
        summary = f"{summary} {extra.strip()}".strip()
    return fill_template(settings, summary, levels)


def fill_template(settings, summary: str, levels: dict[str, str]) -> str:
    """The run's template with this summary and these level words (the first level where none is given)."""
    values = {}
    for f in template_fields(settings):
        words = field_levels(settings, f)
        values[f] = levels.get(f, words[0])
        if values[f] not in words:
            raise HistosynthError(f"{f}: '{values[f]}' is not one of {', '.join(words)}")
    # As `text.condition.condition_text` fills it, with the level words chosen instead of binned scores.
    return settings.template.format(summary=summary, **values).strip()


def field_levels(settings, name: str) -> tuple[str, ...]:
    """Words a template field takes: patch descriptors have their own bins, scores the run's levels."""
    edges = getattr(settings, "descriptor_edges", None) or {}
    words = getattr(settings, "descriptor_levels", None)
    return tuple(words) if name in edges and words else tuple(settings.levels)


# ---- generation -------------------------------------------------------------------------------
def load_pipeline(run_dir: Path, device: str = "cpu"):
    from ..sample.pipeline import HistoSynthPipeline

    return HistoSynthPipeline.from_pretrained(run_dir, device=device)


def set_sampler(pipe, run_dir: Path, sampler: str) -> None:
    """Swap the sampler as diffusers users do: a new scheduler from the run's training schedule."""
    from diffusers import DDPMScheduler

    from ..runfolder import RunFolder
    from ..schedules import SAMPLERS, sampling_scheduler

    if sampler not in SAMPLERS:
        raise HistosynthError(f"sampler {sampler}: choose from {', '.join(SAMPLERS)}")
    pipe.scheduler = sampling_scheduler(DDPMScheduler.load_config(RunFolder(run_dir).scheduler_dir), sampler)


def tile_size(pipe) -> int:
    """Edge in pixels of the images the U-Net was trained on."""
    levels = len(pipe.vae.config.block_out_channels)
    return int(pipe.unet.config.sample_size) * 2 ** (levels - 1)


def supports_size(pipe) -> bool:
    """True when the pipeline takes height/width (large images); else it makes tiles of `tile_size` only."""
    params = inspect.signature(pipe.__call__).parameters
    return "height" in params and "width" in params


@dataclass
class Request:
    prompt: str
    sampler: str
    steps: int
    guidance: float
    seed: int
    n: int
    height: int
    width: int


def generate(pipe, request: Request, progress: Callable | None = None) -> list[np.ndarray]:
    """uint8 [H, W, 3] images; image i gets seed + i, as in `histosynth sample`."""
    kwargs = dict(num_inference_steps=request.steps, guidance_scale=request.guidance,
                  seed=[request.seed + i for i in range(request.n)], output_type="np", progress=progress)
    native = tile_size(pipe)
    if (request.height, request.width) != (native, native):
        if not supports_size(pipe):
            raise HistosynthError(f"height/width {request.height}x{request.width}: this pipeline makes "
                                  f"{native}x{native} tiles only")
        kwargs.update(height=request.height, width=request.width)
    return list(pipe(prompt=[request.prompt] * request.n, **kwargs).images)


def write_png(folder: Path, image: np.ndarray, request: Request, index: int, pipe, run_dir: Path) -> Path:
    """The PNG `histosynth sample` would write: provenance tEXt chunks (synthetic=true, prompt, seed ...)."""
    from ..imageio import save_png
    from ..sample.generate import provenance

    record = {"prompt": request.prompt, "seed": request.seed + index, "sampler": request.sampler,
              "steps": request.steps, "guidance": request.guidance, "eta": pipe.defaults.eta,
              "checkpoint_hash": pipe.checkpoint_hash}
    path = folder / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-seed{request.seed + index}.png"
    save_png(path, image, provenance(record, run_dir))
    return path


# ---- memorization -----------------------------------------------------------------------------
@dataclass
class Verdict:
    tile_id: int | None
    case_id: str | None
    distance: float | None
    threshold: float | None
    near_copy: bool | None
    note: str


class NearestTiles:
    """Nearest training tile of a generated image and the near-copy verdict of `histosynth evaluate`.

    Thumbnails of at most `limit` training tiles (and `limit` test tiles, which set the threshold)
    are read once, on first use; a larger workspace is subsampled with a fixed seed, as evaluate does.
    """

    def __init__(self, ws_root: Path, limit: int = 20000):
        self.ws_root, self.limit = ws_root, limit
        self._train = None

    def _load(self):
        from ..evaluate import memorization as memo
        from ..evaluate.sources import ImageSet, Source

        if self._train is None:
            sets = {s: ImageSet(Source("workspace", self.ws_root, s), n=self.limit) for s in ("train", "test")}
            thumbs = {s: np.concatenate([memo.thumbnails(b) for b in sets[s].batches(256)]) for s in sets}
            self._train, self._test, self._ids = thumbs["train"], thumbs["test"], sets["train"]
        return self._train, self._test, self._ids

    def check(self, images: list[np.ndarray], tile_px: int) -> list[Verdict]:
        from ..evaluate import memorization as memo

        if any(img.shape[0] != tile_px or img.shape[1] != tile_px for img in images):
            return [Verdict(None, None, None, None, None, "not checked: larger than a training tile")] * len(images)
        train, test, ids = self._load()
        result = memo.memorization(memo.thumbnails(np.stack(images)), train, test)
        verdicts = []
        for idx, dist in zip(result["nearest"], result["nearest_distance"]):
            tile_id = int(ids.ids[int(idx)].split(":", 1)[1])
            near = bool(dist < result["threshold"])
            verdicts.append(Verdict(tile_id, None, float(dist), result["threshold"], near, result["threshold_rule"]))
        return verdicts

    def tile(self, tile_id: int) -> np.ndarray:
        _, _, ids = self._load()
        return ids.load([f"tile:{tile_id}"])[0]
