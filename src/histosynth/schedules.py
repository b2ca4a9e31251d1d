"""Noise schedules and the guided denoising loop, kept apart from the models (as diffusers does).

Training uses `training_scheduler`; sampling swaps in DDIM or DPM-Solver++ built from the same
config, and `denoise` writes the classifier-free-guidance loop out in full, so validation grids,
`histosynth sample` and converted PathLDM runs all sample the same way.
"""

from __future__ import annotations

from typing import Callable

import torch

SAMPLERS = ("ddim", "dpmpp")


def scheduler_kwargs(diffusion) -> dict:
    """diffusers arguments for a DiffusionConfig. PathLDM's 'linear' = diffusers' 'scaled_linear'."""
    return dict(
        num_train_timesteps=diffusion.num_train_timesteps,
        beta_schedule=diffusion.beta_schedule,
        beta_start=diffusion.beta_start,
        beta_end=diffusion.beta_end,
        prediction_type=diffusion.prediction_type,
    )


def training_scheduler(diffusion):
    from diffusers import DDPMScheduler

    # clip_sample=False: latents are not confined to [-1, 1] as pixels are.
    return DDPMScheduler(**scheduler_kwargs(diffusion), clip_sample=False)


def sampling_scheduler(base_config: dict, sampler: str):
    """A sampler with the training schedule. CompVis-compatible DDIM: leading spacing, offset 1."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        return DDIMScheduler.from_config(
            base_config, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
        )
    if sampler == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=False,
            timestep_spacing="leading", steps_offset=1,
        )
    raise ValueError(f"sampler: unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")


def betas_of(diffusion) -> torch.Tensor:
    return training_scheduler(diffusion).betas


Prediction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (latents, t) -> model output


def guided_prediction(unet: Callable, cond: torch.Tensor, uncond: torch.Tensor | None,
                      cond_mask: torch.Tensor | None = None, uncond_mask: torch.Tensor | None = None,
                      guidance: float = 1.5) -> Prediction:
    """The classifier-free guided model output: eps = eps_u + g * (eps_c - eps_u)."""
    guided = uncond is not None and guidance != 1.0
    if guided:
        context = torch.cat([uncond, cond])
        mask = None
        if cond_mask is not None or uncond_mask is not None:
            ones = torch.ones(cond.shape[:2], device=cond.device, dtype=torch.long)
            mask = torch.cat([uncond_mask if uncond_mask is not None else ones,
                              cond_mask if cond_mask is not None else ones])
    else:
        context, mask = cond, cond_mask

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_in = torch.cat([latents, latents]) if guided else latents
        out = unet(model_in, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        if guided:
            out_u, out_c = out.chunk(2)
            out = out_u + guidance * (out_c - out_u)
        return out

    return predict


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every `stride`, the last flush with the edge."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def windowed(predict: Prediction, window: int, stride: int) -> Prediction:
    """MultiDiffusion (Bar-Tal et al. 2023): the model sees one window at a time, and every latent
    pixel gets the mean of the outputs of the windows covering it.

    Averaging the model outputs and taking one scheduler step equals averaging the windows' own
    steps (MultiDiffusion's closed form) for the DDIM and DPM-Solver++ updates, which are affine in
    the model output with the same coefficients for every pixel; it also keeps multistep solvers'
    history whole. With stride == window the windows do not overlap: independent tiles (the
    negative control of the seam test). Memory of the model is that of one window.
    """
    def predict_windows(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        height, width = latents.shape[-2:]
        total = torch.zeros_like(latents)
        count = torch.zeros((1, 1, height, width), device=latents.device, dtype=latents.dtype)
        for y in window_starts(height, window, stride):
            for x in window_starts(width, window, stride):
                crop = (..., slice(y, y + window), slice(x, x + window))
                total[crop] += predict(latents[crop], t)
                count[crop] += 1
        return total / count

    return predict_windows


@torch.no_grad()
def denoise(
    unet: Callable,
    scheduler,
    latents: torch.Tensor,                  # initial noise [B, C, H, W], already scaled by init_noise_sigma
    cond: torch.Tensor,                     # text hidden states [B, L, D]
    uncond: torch.Tensor | None,            # hidden states of "" [B, L, D]; None disables guidance
    cond_mask: torch.Tensor | None = None,  # [B, L] 1 = attend; None attends to every token
    uncond_mask: torch.Tensor | None = None,
    steps: int = 50,
    guidance: float = 1.5,                  # 1.0 = conditional only
    eta: float = 0.0,                       # DDIM only
    generator: torch.Generator | None = None,
    progress: Callable | None = None,       # wraps the timestep iterator (e.g. a progress bar)
    window: int | None = None,              # latent px the U-Net sees at once (None: the whole latent)
    stride: int | None = None,              # between windows; window // 2 by default
    on_step_end: Callable | None = None,    # (step index, t, latents) -> latents, after every step
) -> torch.Tensor:
    """Classifier-free guided reverse diffusion, over the whole latent or overlapping windows."""
    scheduler.set_timesteps(steps, device=latents.device)
    predict = guided_prediction(unet, cond, uncond, cond_mask, uncond_mask, guidance)
    if window is not None and tuple(latents.shape[-2:]) != (window, window):
        predict = windowed(predict, window, stride or max(1, window // 2))
    step_kwargs = {"eta": eta, "generator": generator} if "eta" in _step_params(scheduler) else {}
    timesteps = scheduler.timesteps
    for i, t in enumerate(progress(timesteps) if progress else timesteps):
        out = predict(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
        if on_step_end is not None:
            latents = on_step_end(i, t, latents)
    return latents


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
