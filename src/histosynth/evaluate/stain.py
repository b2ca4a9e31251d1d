"""Colour/stain distributions after colour deconvolution into haematoxylin, eosin and DAB (HED).

Needs no network weights, so it is always computed: a generator can score a good FID with the
wrong staining. Two views: per-channel 1-D Wasserstein distances between the pooled pixel
distributions, and a Frechet distance between Gaussians of per-image stain descriptors
(mean and std of H, E, D), which also sees how staining varies between tiles.
"""

from __future__ import annotations

import numpy as np

from .metrics import frechet_distance, gaussian_stats

CHANNELS = ("h", "e", "d")
PIXELS_PER_IMAGE = 256   # pixels sampled per image for the pooled distributions


def describe(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [B, H, W, 3] -> per-image descriptors [B, 6] and sampled HED pixels [B * k, 3]."""
    from skimage.color import rgb2hed

    hed = rgb2hed(images).reshape(len(images), -1, 3).astype(np.float32)
    stats = np.concatenate([hed.mean(axis=1), hed.std(axis=1)], axis=1)
    k = min(PIXELS_PER_IMAGE, hed.shape[1])
    picks = np.stack([rng.choice(hed.shape[1], k, replace=False) for _ in range(len(images))])
    pixels = np.take_along_axis(hed, picks[:, :, None], axis=1).reshape(-1, 3)
    return stats, pixels


def stain_distance(real_stats: np.ndarray, real_pixels: np.ndarray,
                   fake_stats: np.ndarray, fake_pixels: np.ndarray) -> dict:
    from scipy.stats import wasserstein_distance

    out = {f"w1_{c}": float(wasserstein_distance(real_pixels[:, i], fake_pixels[:, i])) for i, c in enumerate(CHANNELS)}
    out["frechet_hed"] = frechet_distance(*gaussian_stats(real_stats), *gaussian_stats(fake_stats))
    out["mean_real"] = dict(zip(CHANNELS, map(float, real_stats[:, :3].mean(axis=0))))
    out["mean_fake"] = dict(zip(CHANNELS, map(float, fake_stats[:, :3].mean(axis=0))))
    return out
