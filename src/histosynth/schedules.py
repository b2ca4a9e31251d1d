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
) -> torch.Tensor:
    """Classifier-free guided reverse diffusion: eps = eps_u + g * (eps_c - eps_u)."""
    scheduler.set_timesteps(steps, device=latents.device)
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
    step_kwargs = {"eta": eta, "generator": generator} if "eta" in _step_params(scheduler) else {}
    timesteps = scheduler.timesteps
    for t in (progress(timesteps) if progress else timesteps):
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        out = unet(model_in, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        if guided:
            out_u, out_c = out.chunk(2)
            out = out_u + guidance * (out_c - out_u)
        latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
    return latents


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
