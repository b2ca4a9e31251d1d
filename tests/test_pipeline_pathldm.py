"""diffusers loads a converted (tiny, randomly initialised) PathLDM run and matches `histosynth sample`."""

from __future__ import annotations

import numpy as np

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
