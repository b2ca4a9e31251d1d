"""Typed configuration: one pydantic model per stage, presets as YAML, `--set a.b=v` overrides.

A resolved config is the preset, then an optional YAML file, then command-line overrides, in that
order. Every field says its unit. Unknown keys are errors (a typo must not silently do nothing).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESETS = ("tiny-cpu", "pathldm", "rao-gupta")
DEFAULT_PRESET = "tiny-cpu"


CONFIG_FILE = "histosynth.yaml"   # a workspace's and a run's resolved config


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the field (exit code 2)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Section):
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # share of cases held out for evaluation
    seed: int = 0                                     # seeds the case-level shuffle, once per workspace


class SlidesConfig(Section):
    mpp: float = Field(1.0, gt=0)              # target microns per pixel of the tiles (1.0 ~ 10x)
    size: int = Field(256, ge=16)              # tile edge in pixels at the target mpp
    overlap: int = Field(0, ge=0)              # pixels shared by neighbouring tiles
    min_tissue: float = Field(0.5, ge=0, le=1)  # keep tiles with at least this tissue fraction
    sample_types: list[str] = []               # TCGA sample types to keep, e.g. ["01"]; empty keeps all
    slide_types: list[str] = []                # TCGA slide types to keep, e.g. ["DX"]; empty keeps all
    assume_mpp: float | None = Field(None, gt=0)  # mpp for slides whose metadata has none
    workers: int = Field(1, ge=1)              # slides tiled in parallel (processes)
    compression: Literal["gzip", "lzf", "none"] = "gzip"  # HDF5 compression of the tile pixels
    gzip_level: int = Field(1, ge=1, le=9)     # 1 fastest; H&E tiles shrink to ~0.65 at 1 and at 9 alike
    threads: int = Field(2, ge=1)              # reader threads within one slide (region reads, resizing)
    mpp_tolerance: float = Field(0.05, ge=0, lt=0.5)  # relative mpp mismatch read as is, without resizing
    descriptors: bool = True                   # compute patch descriptors (slides/descriptors.py) when tiling

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class SummariesConfig(Section):
    budget: int = Field(35, ge=5)              # tokens, counted in `tokenizer` without start/end tokens
    backend: Literal["extractive", "openai"] = "extractive"  # LLM only when asked for explicitly
    model: str = "gpt-4o-mini"                 # chat model for the openai backend
    base_url: str | None = None                # any OpenAI-compatible server (vLLM, Ollama, llama.cpp)
    prompt: Literal["histosynth-v1", "paper"] = "histosynth-v1"
    tokenizer: str | None = None               # None: the text encoder's own tokenizer
    max_attempts: int = Field(3, ge=1)         # LLM tries before deterministic compression
    concurrency: int = Field(8, ge=1)          # requests in flight
    requests_per_second: float = Field(5.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)       # per request
    temperature: float = 0.0
    seed: int = 0                              # best effort on the server's side
    redact: bool = True                        # strip personal identifiers before non-local requests
    request_retries: int = Field(4, ge=0)      # retries of one request (429, 5xx, timeout, malformed reply)
    backoff_s: float = Field(1.0, ge=0)        # first retry wait, doubled per retry (at least Retry-After)
    findings: list[str] = []                   # findings the prompt asks for; empty: the template's list


class TextConfig(Section):
    encoder: str = "minilm"                    # registry name, hub id or local folder
    long_context: Literal["chunked", "interpolate"] = "chunked"  # beyond the encoder's positions
    context_length: int | None = Field(None, ge=1)  # tokens incl. specials; None: computed from budget
    template: str = "{summary}"                # condition text; may use {tumor}, {til}, {summary}
    levels: list[str] = ["low", "high"]        # bins for per-tile probabilities in the template
    attend_padding: bool = False               # True: U-Net attends to padding tokens (PathLDM did)
    batch_size: int = Field(64, ge=1)          # texts per encoder call
    shard_size: int = Field(1024, ge=1)        # texts per safetensors shard (the unit of resume)
    store_dtype: Literal["float32", "float16"] = "float32"  # hidden states on disk; float16 halves the size
    missing_summary: Literal["error", "empty"] = "error"    # tiles of cases without a summary: fail, or use ""


class VAEConfig(Section):
    pretrained: str | None = None              # hub id or folder of a diffusers AutoencoderKL/VQModel
    kind: Literal["kl", "vq"] = "kl"
    block_out_channels: list[int] = [32, 64, 64]  # one per level; f = 2 ** (levels - 1)
    layers_per_block: int = 1
    latent_channels: int = 4
    steps: int = Field(600, ge=0)              # optimiser steps when trained here
    batch_size: int = 16
    lr: float = 2e-4
    kl_weight: float = 1e-6
    seed: int = 0
    num_vq_embeddings: int = Field(8192, ge=2)  # codebook size of a VQModel (PathLDM: 8192)
    scale_tiles: int = Field(512, ge=1)        # training tiles whose latent std sets scaling_factor
    eval_tiles: int = Field(256, ge=1)         # test tiles for the reconstruction PSNR / SSIM
    dihedral_check_tiles: int = Field(64, ge=0)  # tiles to measure latent-space dihedral error on
    cache_dihedral: bool = False               # also cache the 7 other dihedral variants (8x encode + disk; exact)
    encode_batch_size: int = Field(32, ge=1)   # tiles per VAE call when caching latents


class UNetConfig(Section):
    block_out_channels: list[int] = [64, 128, 128]  # channels per resolution level
    layers_per_block: int = 2
    cross_attention_levels: list[bool] = [False, True, True]  # which levels cross-attend to the text
    attention_head_dim: int | None = 32        # channels per head; None: one head per block
    transformer_layers_per_block: int = 1
    norm_num_groups: int = 32


class DiffusionConfig(Section):
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = 0.0015                 # PathLDM's "linear" = diffusers' scaled_linear
    beta_end: float = 0.0195
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"


class TrainConfig(Section):
    steps: int = Field(400, ge=1)              # optimiser steps
    batch_size: int = Field(16, ge=1)          # per process, per accumulation step
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    ema: bool = True
    ema_decay: float = Field(0.999, gt=0, lt=1)
    cfg_dropout: float = Field(0.1, ge=0, le=1)  # share of captions replaced by "" for guidance
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    min_snr_gamma: float | None = None         # Min-SNR loss weighting; None: plain MSE
    checkpoint_every: int = 100                # steps
    keep_checkpoints: int = 2
    validate_every: int = 0                    # steps between sample grids; 0: only at the end
    seed: int = 0
    dihedral: bool = True                      # random flips/quarter turns, applied to the latents
    validation_images: int = Field(8, ge=0)    # images in each validation grid
    heldout_tiles: int = Field(32, ge=1)       # fixed test-split batch for the held-out loss
    log_samples: bool = False                  # write each rank's tile ids per step to logs/ (debugging)
    init_from: str | None = None               # run or U-Net folder to fine-tune from (e.g. convert-pathldm)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML reads `--set train.mixed_precision=no` as false


class SampleConfig(Section):
    sampler: Literal["ddim", "dpmpp"] = "ddim"
    steps: int = Field(50, ge=1)
    guidance: float = Field(1.5, ge=0)         # classifier-free guidance scale; 1.0 = none
    eta: float = Field(0.0, ge=0)              # DDIM noise; 0 is deterministic
    batch_size: int = Field(16, ge=1)
    seed: int = 0


class EvaluateConfig(Section):
    metrics: list[str] = ["fid", "kid", "pr", "stain", "memorization", "fidelity", "descriptors", "c2st", "classes"]
    n: int | None = None                       # images per side; None: all
    inception_weights: str | None = None       # pt_inception-2015-12-05 file; else $HISTOSYNTH_INCEPTION
    batch_size: int = 32
    crop: int | None = Field(None, ge=16)      # px, centre crop before every metric; None: whole tiles


class HistoSynthConfig(Section):
    preset: str = DEFAULT_PRESET
    split: SplitConfig = SplitConfig()
    slides: SlidesConfig = SlidesConfig()
    summaries: SummariesConfig = SummariesConfig()
    text: TextConfig = TextConfig()
    vae: VAEConfig = VAEConfig()
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    text = resources.files("histosynth.presets").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    base = data.pop("inherit", None)  # a preset may start from another one
    if base:
        data = deep_merge(preset_dict(base), data)
    data["preset"] = name
    return data


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 1e-4); values are parsed as YAML scalars or lists."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        if ".".join(path) in REMOVED_FIELDS:
            raise ConfigError(f"--set {item}: {'.'.join(path)} was removed ({REMOVED_FIELDS['.'.join(path)]})")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
        node[path[-1]] = value
    return data


# Fields of earlier releases: saved configs that still carry them load (the field is dropped with a
# warning); setting one now is an error that says why it went.
REMOVED_FIELDS = {
    "train.log_every": "the loss is logged at every step",
    "train.num_workers": "training reads cached latents; there are no loader workers",
    "vae.perceptual_weight": "no perceptual-loss (LPIPS) weights can be had offline",
}


def drop_removed_fields(data: dict, source: str) -> dict:
    from .console import warn

    data = copy.deepcopy(data)
    for dotted, why in REMOVED_FIELDS.items():
        section, name = dotted.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            del data[section][name]
            warn(f"{source}: {dotted} was removed in histosynth 0.2 ({why}); ignored")
    return data


def validate(data: dict, source: str = "config") -> HistoSynthConfig:
    try:
        return HistoSynthConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise ConfigError(f"{source}: {field}: {msg}") from None


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
) -> HistoSynthConfig:
    """Resolve preset -> base (e.g. a workspace's saved config) -> YAML file -> `--set` overrides."""
    if base is not None and preset is None:
        data = drop_removed_fields(base, "saved config")
    else:
        data = preset_dict(preset or DEFAULT_PRESET)
    if file is not None:
        path = Path(file)
        try:
            extra = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.__class__.__name__})") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"{path}: a config file must be a mapping")
        data = deep_merge(data, drop_removed_fields(extra, str(path)))
    data = apply_overrides(data, list(overrides))
    return validate(data, source=str(file) if file else "config")


def to_yaml(config: HistoSynthConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
