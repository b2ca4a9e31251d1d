"""histosynth: whole-slide images and pathology reports to a text-conditioned latent diffusion model."""

__version__ = "0.1.0"
