"""HistoSynthPipeline: a run folder as a diffusers `DiffusionPipeline`.

    pipe = HistoSynthPipeline.from_pretrained("runs/tiny")              # EMA weights when present
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # swap as in diffusers
    images = pipe(prompt="high tumor; low til; ...", num_inference_steps=20, guidance_scale=1.5).images

or, with diffusers alone (the run's model index names this module's components):

    pipe = DiffusionPipeline.from_pretrained("runs/tiny", custom_pipeline="<path of this file>",
                                             trust_remote_code=True)

Both give the images `histosynth sample` writes for the same prompts and seeds. Each image has its
own seed: its starting noise (and DDIM's eta noise) come from a generator seeded with it, so an
image does not depend on the batch it was generated in. Images larger than the model's tile
(`height=`, `width=`, multiples of the tile) are denoised in overlapping latent windows averaged at
every step (MultiDiffusion) and decoded in overlapping tiles, so memory follows the window, not the
image. The denoising loop is `histosynth.schedules.denoise`, shared with training's validation grids.

This file is loaded by diffusers as a standalone module (copied into its module cache), so it
imports histosynth by absolute names only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput

from histosynth.config import SampleConfig
from histosynth.fileio import hash_input
from histosynth.imageio import to_uint8
from histosynth.runfolder import EMA_COMPONENT, Condition, RunFolder
from histosynth.sample.components import HistoSynthTextEncoder
from histosynth.schedules import denoise, sampling_scheduler, window_starts

OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class HistoSynthPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor   # PIL images, uint8 [B, H, W, 3], or latents


class HistoSynthPipeline(DiffusionPipeline):
    """U-Net + VAE + scheduler + text encoder of one run; `__call__` turns prompts into images."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = [EMA_COMPONENT]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, vae, scheduler, text_encoder: HistoSynthTextEncoder, unet_ema=None,
                 source_checkpoint: dict | None = None):
        super().__init__()
        # The EMA weights are the ones to sample with; the raw U-Net is not kept beside them.
        self.uses_ema = unet_ema is not None
        unet = (unet_ema if unet_ema is not None else unet).eval().requires_grad_(False)
        vae = vae.eval().requires_grad_(False)
        if type(scheduler) is DDPMScheduler:  # the run's training schedule: sample with its sampler
            scheduler = sampling_scheduler(scheduler.config, text_encoder.run_config.sample.sampler)
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, unet_ema=None)
        # model_index.json's record of the checkpoint a converted run came from ({file, sha256, ...})
        self.register_to_config(source_checkpoint=source_checkpoint)
        self._uncond = None                 # hidden states of "" (computed once per device)
        self._checkpoint_hash = None

    # ---- loading and saving through the run folder ---------------------------------------------
    @classmethod
    def from_pretrained(cls, run_dir: str | Path, *, sampler: str | None = None, use_ema: bool = True,
                        device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                        **kwargs) -> "HistoSynthPipeline":
        """A run folder (trained, converted or saved by `save_pretrained`), on `device` (default: cuda if any)."""
        from diffusers import UNet2DConditionModel

        run = RunFolder(run_dir).require()
        unet_dir = run.sampling_unet_dir(use_ema)
        parts = {"unet": UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=dtype), EMA_COMPONENT: None}
        if "text_encoder" not in run.read_model_index():  # runs written before the text encoder was a component
            parts["text_encoder"] = HistoSynthTextEncoder.from_run(run)
        base = DDPMScheduler.load_config(run.scheduler_dir)
        parts["scheduler"] = sampling_scheduler(base, sampler or run.read_config().sample.sampler)
        pipe = super().from_pretrained(str(run.path.resolve()), dtype=dtype, **parts, **kwargs)
        pipe.uses_ema = unet_dir == run.unet_ema_dir
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return pipe.to(device)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """A run folder another `from_pretrained` loads: U-Net (the sampling weights), VAE, scheduler,
        text encoder (local weights, or its name), config, condition record and model index."""
        import diffusers

        from histosynth.fileio import atomic_dir
        from histosynth.modelcard import run_metrics, training_data, write_model_card

        out = Path(save_directory)
        with atomic_dir(out) as tmp:
            run = RunFolder(tmp)
            self.unet.save_pretrained(run.unet_dir, safe_serialization=True)
            self.vae.save_pretrained(run.vae_dir, safe_serialization=True)
            self.scheduler.save_pretrained(run.scheduler_dir)
            condition = self.condition
            if self.text_encoder.stores_weights:
                self.text_encoder.save_pretrained(run.text_encoder_dir)
            run.write_config(self.text_encoder.run_config)
            run.write_condition(condition)
            run.write_model_index(self.component_index(), diffusers.__version__,
                                  source_checkpoint=self.source_checkpoint)
            origin = self.origin  # the card keeps what the original run recorded about data and metrics
            write_model_card(run, metrics=run_metrics(origin) if origin else None,
                             data=training_data(origin, self.source_checkpoint, condition.source_workspace)
                             if origin else None)

    def component_index(self) -> dict[str, tuple[str, str]]:
        """`[library, class]` of each component, as model_index.json records them."""
        from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

        return {name: _fetch_class_library_tuple(getattr(self, name))
                for name in ("unet", "vae", "scheduler", "text_encoder")}

    @property
    def condition(self) -> Condition:
        return self.text_encoder.condition

    @property
    def defaults(self) -> SampleConfig:
        return self.text_encoder.run_config.sample

    @property
    def origin(self) -> RunFolder | None:
        """The run folder this pipeline was loaded from, if any."""
        path = getattr(self.config, "_name_or_path", None)
        return RunFolder(path) if path and Path(path).is_dir() else None

    @property
    def source_checkpoint(self) -> dict | None:
        return self.config.source_checkpoint

    @property
    def unet_dir(self) -> Path | None:
        """The run folder's unet_ema/ or unet/ whose weights this pipeline samples with."""
        if self.origin is None:
            return None
        return self.origin.unet_ema_dir if self.uses_ema else self.origin.unet_dir

    @property
    def checkpoint_hash(self) -> str | None:
        """Identity of the U-Net weights used (hash of the run's unet_ema/ or unet/ folder)."""
        if self._checkpoint_hash is None and self.unet_dir is not None:
            self._checkpoint_hash = hash_input(self.unet_dir)
        return self._checkpoint_hash

    def to(self, *args, **kwargs) -> "HistoSynthPipeline":
        self._uncond = None
        return super().to(*args, **kwargs)

    # ---- pieces -------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        """Edge in pixels of the images the U-Net was trained on."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [B, L, D] and mask [B, L] (None when the run attends to padding)."""
        hidden, mask = self.text_encoder(list(prompts), self._execution_device)
        return hidden.to(self.unet.dtype), mask

    def unconditional(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._uncond is None or self._uncond[0].device != self._execution_device:
            self._uncond = self.encode_prompt([""])
        hidden, mask = self._uncond
        return hidden.expand(batch, -1, -1), (mask.expand(batch, -1) if mask is not None else None)

    def prepare_latents(self, generators: list[torch.Generator], height: int, width: int) -> torch.Tensor:
        """One noise draw per image from its own CPU generator: the same on every device."""
        c, f = self.unet.config.in_channels, self.vae_scale_factor
        noise = torch.cat([torch.randn((1, c, height // f, width // f), generator=g) for g in generators])
        return noise.to(self._execution_device, self.unet.dtype) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """Latents -> images in [-1, 1]; larger than a tile: overlapping tiles, overlaps blended.

        A VQModel quantises first, as diffusers' (and CompVis') decode does.
        """
        from histosynth.latents.vae import decode

        latents = (latents / self.vae.config.scaling_factor).to(self.vae.dtype)
        window = self.unet.config.sample_size
        if tuple(latents.shape[-2:]) == (window, window):
            return decode(self.vae, latents)
        return self._decode_tiled(latents, window, stride or max(1, window // 2))

    def _decode_tiled(self, latents: torch.Tensor, window: int, stride: int) -> torch.Tensor:
        """Decode window by window; each tile weighs its pixels by a ramp over the overlap, so tiles
        cross-fade instead of meeting at an edge (the decoder sees no context past its tile)."""
        from histosynth.latents.vae import decode

        f = self.vae_scale_factor
        height, width = latents.shape[-2] * f, latents.shape[-1] * f
        image = torch.zeros((latents.shape[0], 3, height, width), dtype=torch.float32)
        weight = torch.zeros((1, 1, height, width), dtype=torch.float32)
        ramp = _ramp(window * f, (window - stride) * f)
        tile_weight = (ramp[:, None] * ramp[None, :])[None, None]
        for y in window_starts(latents.shape[-2], window, stride):
            for x in window_starts(latents.shape[-1], window, stride):
                tile = decode(self.vae, latents[..., y:y + window, x:x + window]).float().cpu()
                region = (..., slice(y * f, (y + window) * f), slice(x * f, (x + window) * f))
                image[region] += tile * tile_weight
                weight[region] += tile_weight
        return (image / weight).clamp(-1, 1)

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
        height: int | None = None,                # px, a multiple of the tile size (None: one tile)
        width: int | None = None,
        window_stride: int | None = None,         # latent px between windows (None: half a window)
        output_type: str = "pil",                 # "pil", "np" (uint8 [B, H, W, 3]) or "latent"
        callback_on_step_end: Callable | None = None,  # (pipe, step, t, {"latents": ...}) -> dict
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        progress: Callable | None = None,         # wraps the timestep iterator; None: diffusers' bar
    ) -> HistoSynthPipelineOutput:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: '{output_type}' is not one of {', '.join(OUTPUT_TYPES)}")
        height, width = self._check_size(height), self._check_size(width)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in self._seeds(seed, len(prompts))]
        steps = num_inference_steps or self.defaults.steps
        guidance = self.defaults.guidance if guidance_scale is None else guidance_scale
        cond, cond_mask = self.encode_prompt(prompts)
        uncond, uncond_mask = self.unconditional(len(prompts)) if guidance != 1.0 else (None, None)

        def on_step_end(i, t, latents):
            if callback_on_step_end is None:
                return latents
            tensors = {"latents": latents} if "latents" in callback_on_step_end_tensor_inputs else {}
            return callback_on_step_end(self, i, t, tensors).get("latents", latents)

        with self.progress_bar(total=steps) as bar:
            def bar_steps(timesteps):
                for t in timesteps:
                    yield t
                    bar.update()

            latents = denoise(
                self.unet, self.scheduler, self.prepare_latents(generators, height, width), cond, uncond,
                cond_mask=cond_mask, uncond_mask=uncond_mask, steps=steps, guidance=guidance,
                eta=self.defaults.eta if eta is None else eta,
                generator=generators,  # diffusers draws one noise per image from a list of generators
                progress=progress or bar_steps, window=self.unet.config.sample_size, stride=window_stride,
                on_step_end=on_step_end,
            )
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return HistoSynthPipelineOutput(images=latents)
        images = to_uint8(self.decode_latents(latents, stride=window_stride))
        if output_type == "np":
            return HistoSynthPipelineOutput(images=images)
        from PIL import Image

        return HistoSynthPipelineOutput(images=[Image.fromarray(img) for img in images])

    def _check_size(self, size: int | None) -> int:
        tile = self.tile_size
        if size is None:
            return tile
        if size < tile or size % tile:
            raise ValueError(f"height/width {size}: must be a multiple of the tile size {tile} px")
        return int(size)

    def _seeds(self, seed: int | Sequence[int] | None, count: int) -> list[int]:
        if seed is None:
            seed = self.defaults.seed
        if isinstance(seed, int):
            return [seed + i for i in range(count)]
        seeds = [int(s) for s in seed]
        if len(seeds) != count:
            raise ValueError(f"seed: {len(seeds)} seeds for {count} images")
        return seeds


def _ramp(length: int, overlap: int) -> torch.Tensor:
    """1 in the middle of a tile, rising linearly across the first and last `overlap` pixels."""
    i = torch.arange(length, dtype=torch.float32)
    if overlap <= 0:
        return torch.ones(length)
    return torch.clamp(torch.minimum(i + 1, length - i) / (overlap + 1), max=1.0)
