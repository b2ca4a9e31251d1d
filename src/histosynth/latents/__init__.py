"""latents stage."""
