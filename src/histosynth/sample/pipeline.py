"""HistoSynthPipeline: a run folder as a diffusers-style text-to-image pipeline.

    pipe = HistoSynthPipeline.from_pretrained("WS/runs/tiny")            # EMA weights when present
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # swap as in diffusers
    images = pipe(prompt="high tumor; low til; ...", num_inference_steps=20, guidance_scale=1.5).images

Each image has its own seed: its starting noise (and DDIM's eta noise) come from a generator seeded
with it, so an image does not depend on the batch it was generated in, and the same seed gives the
same image. The denoising loop itself is `histosynth.schedules.denoise`, shared with training's
validation grids and converted PathLDM runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import yaml

from ..config import HistoSynthConfig, SampleConfig, load_config
from ..console import HistosynthError
from ..fileio import hash_input, read_json
from ..imageio import to_uint8
from ..schedules import denoise, sampling_scheduler

CONFIG_NAME = "histosynth.yaml"
TEXT_ENCODER_JSON = "text_encoder.json"


@dataclass
class TextSettings:
    """How the run's U-Net saw text: `text_encoder.json` of the run."""

    encoder: str                      # registry name, hub id or folder
    context_length: int               # tokens incl. start/end
    long_context: str = "chunked"
    attend_padding: bool = False      # True: the U-Net gets no mask (PathLDM)
    template: str = "{summary}"
    levels: tuple[str, ...] = ("low", "high")
    budget: int | None = None         # summary budget in tokens the run was trained with

    @classmethod
    def from_json(cls, data: dict) -> "TextSettings":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        known["levels"] = tuple(known.get("levels", ("low", "high")))
        return cls(**known)


@dataclass
class HistoSynthPipelineOutput:
    images: list | np.ndarray | torch.Tensor   # PIL images, uint8 [B, H, W, 3], or latents


def run_config(run_dir: str | Path) -> HistoSynthConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        raise HistosynthError(f"{path}: not found; is {run_dir} a run folder made by `histosynth train`?")
    return load_config(base=yaml.safe_load(path.read_text()) or {})


def load_text_encoder(run_dir: Path, settings: TextSettings, device: torch.device):
    """The run's own encoder weights (`text_encoder/`) when present, else the named encoder."""
    from ..text.encoders import load_encoder

    local = run_dir / "text_encoder"
    return load_encoder(str(local) if local.is_dir() else settings.encoder, device=device)


def unet_folder(run_dir: Path, use_ema: bool = True) -> Path:
    ema = run_dir / "unet_ema"
    folder = ema if use_ema and (ema / "config.json").exists() else run_dir / "unet"
    if not (folder / "config.json").exists():
        raise HistosynthError(f"{folder}: no U-Net here; is {run_dir} a finished run?")
    return folder


class HistoSynthPipeline:
    """U-Net + VAE + scheduler + text encoder of one run; `__call__` turns prompts into images."""

    def __init__(self, *, unet, vae, scheduler, text_encoder, text_settings: TextSettings,
                 defaults: SampleConfig | None = None, unet_dir: Path | None = None):
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae
        self.scheduler = scheduler          # any diffusers scheduler built from the training schedule
        self.text_encoder = text_encoder
        self.text_settings = text_settings
        self.defaults = defaults or SampleConfig()
        self.unet_dir = unet_dir            # the weights used (unet_ema/ or unet/)
        self.checkpoint_hash = hash_input(unet_dir) if unet_dir else None
        self._uncond = None                 # hidden states of "" (computed once)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, *, sampler: str | None = None, use_ema: bool = True,
                        device: str | torch.device | None = None,
                        dtype: torch.dtype = torch.float32) -> "HistoSynthPipeline":
        from diffusers import DDPMScheduler, UNet2DConditionModel

        from ..latents.vae import load_vae

        run_dir = Path(run_dir)
        cfg = run_config(run_dir)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        unet_dir = unet_folder(run_dir, use_ema)
        unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=dtype)
        vae = load_vae(run_dir / "vae").eval().requires_grad_(False)
        if vae.dtype != dtype:  # diffusers warns on a cast to the dtype a model already has
            vae = vae.to(dtype=dtype)
        base = DDPMScheduler.load_config(run_dir / "scheduler")
        settings = TextSettings.from_json(read_json(run_dir / TEXT_ENCODER_JSON))
        pipe = cls(
            unet=unet, vae=vae,
            scheduler=sampling_scheduler(base, sampler or cfg.sample.sampler),
            text_encoder=load_text_encoder(run_dir, settings, device),
            text_settings=settings, defaults=cfg.sample,
            unet_dir=unet_dir,
        )
        return pipe.to(device)

    def to(self, device: str | torch.device) -> "HistoSynthPipeline":
        self.unet.to(device)
        self.vae.to(device)
        if hasattr(self.text_encoder, "model"):
            self.text_encoder.model.to(device)
        self._uncond = None
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ---- pieces -------------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [B, L, D] and mask [B, L] (None when the run attends to padding)."""
        s = self.text_settings
        enc = self.text_encoder.encode(list(prompts), context_length=s.context_length, long_context=s.long_context)
        hidden = enc.hidden.to(self.device, self.unet.dtype)
        mask = None if s.attend_padding else enc.mask.to(self.device)
        return hidden, mask

    def unconditional(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._uncond is None:
            self._uncond = self.encode_prompt([""])
        hidden, mask = self._uncond
        return hidden.expand(batch, -1, -1), (mask.expand(batch, -1) if mask is not None else None)

    def prepare_latents(self, generators: list[torch.Generator]) -> torch.Tensor:
        """One noise draw per image from its own CPU generator: the same on every device."""
        c, size = self.unet.config.in_channels, self.unet.config.sample_size
        noise = torch.cat([torch.randn((1, c, size, size), generator=g) for g in generators])
        return noise.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]. A VQModel quantises first, as diffusers' (and CompVis') decode does."""
        from ..latents.vae import decode

        return decode(self.vae, (latents / self.vae.config.scaling_factor).to(self.vae.dtype))

    # ---- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_inference_steps: int | None = None,   # None: the run's sample.steps
        guidance_scale: float | None = None,      # None: the run's sample.guidance; 1.0 = no guidance
        eta: float | None = None,                 # DDIM noise; None: the run's sample.eta
        seed: int | Sequence[int] | None = None,  # one per image, or a first seed counted up
        num_images_per_prompt: int = 1,
        output_type: str = "pil",                 # "pil", "np" (uint8 [B, H, W, 3]) or "latent"
        progress: Callable | None = None,
    ) -> HistoSynthPipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = self._seeds(seed, len(prompts))
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        steps = num_inference_steps or self.defaults.steps
        guidance = self.defaults.guidance if guidance_scale is None else guidance_scale
        cond, cond_mask = self.encode_prompt(prompts)
        uncond, uncond_mask = self.unconditional(len(prompts)) if guidance != 1.0 else (None, None)
        latents = denoise(
            self.unet, self.scheduler, self.prepare_latents(generators), cond, uncond,
            cond_mask=cond_mask, uncond_mask=uncond_mask, steps=steps, guidance=guidance,
            eta=self.defaults.eta if eta is None else eta,
            generator=generators,  # diffusers draws one noise per image from a list of generators
            progress=progress,
        )
        if output_type == "latent":
            return HistoSynthPipelineOutput(images=latents)
        images = to_uint8(self.decode_latents(latents))
        if output_type == "np":
            return HistoSynthPipelineOutput(images=images)
        from PIL import Image

        return HistoSynthPipelineOutput(images=[Image.fromarray(img) for img in images])

    def _seeds(self, seed: int | Sequence[int] | None, count: int) -> list[int]:
        if seed is None:
            seed = self.defaults.seed
        if isinstance(seed, int):
            return [seed + i for i in range(count)]
        seeds = [int(s) for s in seed]
        if len(seeds) != count:
            raise ValueError(f"seed: {len(seeds)} seeds for {count} images")
        return seeds
