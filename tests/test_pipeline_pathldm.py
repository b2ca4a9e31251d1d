"""diffusers loads a converted (tiny, randomly initialised) PathLDM run and matches `histosynth sample`."""

from __future__ import annotations

import numpy as np
import pytest

from histosynth.imageio import load_rgb
from histosynth.sample.generate import sample_run
from test_convert_pathldm import converted, originals  # noqa: F401  (skips without the CompVis `ldm`)
from test_pipeline_diffusers import diffusers_pipeline

PROMPTS = ["high tumor; low til; invasive ductal carcinoma.", "low tumor; high til; lymphocytes."]


def test_diffusers_loads_a_converted_pathldm_run(converted, tmp_path):  # noqa: F811
    out = sample_run(converted["run"], PROMPTS, n=2, steps=3, seed=5, out_dir=tmp_path / "cli")
    pipe = diffusers_pipeline(converted["run"])
    assert pipe.condition.attend_padding and pipe.condition.context_length == 154
    assert type(pipe.vae).__name__ == "VQModel" and not pipe.uses_ema
    assert pipe.source_checkpoint["file"] == "epoch=000003.ckpt"  # from model_index.json
    images = pipe(prompt=PROMPTS, seed=[5, 6], num_inference_steps=3, output_type="np").images
    for i, image in enumerate(images):
        np.testing.assert_array_equal(image, load_rgb(out / f"{i:05d}.png"))


@pytest.mark.unit
def test_converted_config_is_the_condition_and_tile_the_pipeline_needs(tmp_path):
    """Without converting models: PathLDM's YAML gives the run config the pipeline reads back
    (154-token chunked context attending to padding, PathLDM's template, a VQ VAE) and a U-Net
    sample size x VQ factor equal to the tile size."""
    import copy

    from histosynth.convert.pathldm import context_length, histosynth_config, unet_config, vq_config
    from test_convert_pathldm import TINY_YAML

    params = copy.deepcopy(TINY_YAML["model"]["params"])
    for max_length, expected in ((77, 77), (100, 154), (154, 154), (155, 231)):
        params["cond_stage_config"]["params"]["max_length"] = max_length
        assert context_length(params) == expected
    params["cond_stage_config"]["params"].pop("max_length")
    assert context_length(params) == 77
    params = copy.deepcopy(TINY_YAML["model"]["params"])
    cfg = histosynth_config(params, "vinid/plip", tmp_path / "vae")
    assert cfg.text.context_length == 154 and cfg.text.attend_padding and cfg.text.long_context == "chunked"
    assert cfg.text.template == "{tumor} tumor; {til} til; {summary}" and cfg.vae.kind == "vq"
    factor = 2 ** (len(vq_config(params, 1.0)["block_out_channels"]) - 1)
    assert unet_config(params)["sample_size"] * factor == cfg.slides.size == 64
