"""Large images from one prompt: MultiDiffusion windows averaged at every step, tiled decoding.

The seam test runs on the run trained in `trained_run` (real tiles) over 16 seeds: in a band of 4
latent pixels around window borders the image's gradient energy must be within 15 % of the
interior's, and the large images must not be smoother than single-tile samples (blur must not pass).
Independent windows (no overlap, so no averaging) are the negative control and must fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from histosynth.sample.pipeline import HistoSynthPipeline
from test_pipeline_diffusers import tiles_template, trained_run  # noqa: F401  (session fixtures)

SEEDS = list(range(100, 116))   # 16 seeds
GRID = 3                        # windows per side
STEPS = 6
BAND = 2                        # latent px on each side of a border: a band of 4 latent px


@pytest.fixture(scope="module")
def pipe(trained_run):  # noqa: F811
    pipe = HistoSynthPipeline.from_pretrained(trained_run, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gradient_energy(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared grey-level difference across each column boundary and each row boundary."""
    grey = images.astype(np.float64).mean(-1)
    return (np.diff(grey, axis=2) ** 2).mean(axis=(0, 1)), (np.diff(grey, axis=1) ** 2).mean(axis=(0, 2))


def seam_ratio(images: np.ndarray, spacing: int, half_band: int) -> float:
    """Gradient energy across boundaries within `half_band` px of a border (every `spacing` px) over
    the energy elsewhere; 1 means the borders cannot be told from the rest of the image."""
    gx, gy = gradient_energy(images)
    boundary = np.arange(1, len(gx) + 1)              # difference i lies between pixels i-1 and i
    borders = np.arange(spacing, len(gx) + 1 - spacing // 2, spacing)
    distance = np.abs(boundary[:, None] - borders[None, :]).min(axis=1)
    band, interior = distance < half_band, distance >= half_band
    return float((gx[band].mean() + gy[band].mean()) / (gx[interior].mean() + gy[interior].mean()))


def large(pipe, stride: int | None) -> np.ndarray:
    size = GRID * pipe.tile_size
    return pipe(prompt=["tumour"] * len(SEEDS), seed=SEEDS, num_inference_steps=STEPS, guidance_scale=1.0,
                height=size, width=size, window_stride=stride, output_type="np").images


@pytest.fixture(scope="module")
def samples(pipe):
    window = pipe.unet.config.sample_size
    single = pipe(prompt=["tumour"] * len(SEEDS), seed=SEEDS, num_inference_steps=STEPS, guidance_scale=1.0,
                  output_type="np").images
    return {"averaged": large(pipe, None), "independent": large(pipe, window), "single": single}


def test_averaged_windows_leave_no_seams_and_no_blur(pipe, samples):
    f, tile = pipe.vae_scale_factor, pipe.tile_size
    images = samples["averaged"]
    assert images.shape == (16, GRID * tile, GRID * tile, 3)
    at_tiles = seam_ratio(images, tile, BAND * f)           # where independent tiles would meet
    at_windows = seam_ratio(images, tile // 2, BAND * f)    # every window edge (stride: half a window)
    energy = sum(e.mean() for e in gradient_energy(images))
    single = sum(e.mean() for e in gradient_energy(samples["single"]))
    print(f"seam ratio at tile borders {at_tiles:.3f}, at all window borders {at_windows:.3f}; "
          f"gradient energy {energy:.1f} vs single tiles {single:.1f}")
    assert abs(at_tiles - 1) <= 0.15 and abs(at_windows - 1) <= 0.15
    assert energy >= single


def test_independent_windows_fail_the_same_test(pipe, samples):
    f, tile = pipe.vae_scale_factor, pipe.tile_size
    ratio = seam_ratio(samples["independent"], tile, BAND * f)
    print(f"independent windows: seam ratio {ratio:.3f}")
    assert abs(ratio - 1) > 0.15


def test_one_tile_is_the_plain_path_and_sizes_are_checked(pipe):
    a = pipe(prompt="tumour", seed=5, num_inference_steps=2, output_type="np").images
    b = pipe(prompt="tumour", seed=5, num_inference_steps=2, height=pipe.tile_size, width=pipe.tile_size,
             output_type="np").images
    np.testing.assert_array_equal(a, b)
    wide = pipe(prompt="tumour", seed=5, num_inference_steps=2, width=2 * pipe.tile_size, output_type="latent").images
    assert wide.shape[-2:] == (16, 32)
    with pytest.raises(ValueError, match="multiple of the tile size"):
        pipe(prompt="tumour", height=pipe.tile_size + 8)


def test_sample_command_writes_large_images(trained_run, tmp_path):  # noqa: F811
    from histosynth.imageio import load_rgb, png_metadata
    from histosynth.sample.generate import sample_run

    out = sample_run(trained_run, ["tumour"], n=1, steps=2, height=128, width=192, out_dir=tmp_path / "big")
    assert load_rgb(out / "00000.png").shape == (128, 192, 3)
    assert png_metadata(out / "00000.png")["width"] == "192"


@pytest.mark.unit
def test_windowed_prediction_covers_every_pixel_and_averages_overlaps():
    """MultiDiffusion's averaging on a stand-in model (no trained run): a pointwise model is unchanged by
    windowing, every window has the U-Net's size, the last window is flush with the edge, and with
    stride == window the windows are independent tiles (nothing averaged)."""
    import torch

    from histosynth.schedules import window_starts, windowed

    assert window_starts(24, 8, 4) == [0, 4, 8, 12, 16] and window_starts(20, 8, 8) == [0, 8, 12]
    latents = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    shapes = []

    def pointwise(x, t):
        shapes.append(tuple(x.shape))
        return 2 * x + t

    out = windowed(pointwise, 8, 4)(latents, 1.0)
    torch.testing.assert_close(out, 2 * latents + 1.0)
    assert len(shapes) == 3 * 5 and set(shapes) == {(2, 3, 8, 8)}

    def window_mean(x, t):  # depends on the whole window: overlapping windows must be averaged
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)

    tiles = windowed(window_mean, 8, 8)(latents, 0)
    first_tile = latents[..., :8, :8].mean(dim=(-2, -1), keepdim=True).expand(2, 3, 8, 8)
    torch.testing.assert_close(tiles[..., :8, :8], first_tile)
    mixed = windowed(window_mean, 8, 4)(latents, 0)
    # pixel (4, 4) lies in the windows at rows 0, 4 and columns 0, 4: the mean of their four means
    means = [latents[..., y:y + 8, x:x + 8].mean(dim=(-2, -1)) for y in (0, 4) for x in (0, 4)]
    torch.testing.assert_close(mixed[..., 4, 4], sum(means) / 4)
