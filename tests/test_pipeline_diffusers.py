"""HistoSynthPipeline as a diffusers DiffusionPipeline, on a run trained here on real tiles.

`trained_run` (session) is the smallest run that makes recognisable images: real CMU-1 tiles, a
60-step VAE and a 100-step U-Net (the held-out loss is far below predicting zeros). The large-image
tests share it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from histosynth.config import load_config
from histosynth.imageio import load_rgb
from histosynth.runfolder import RunFolder
from histosynth.sample.generate import sample_run
from histosynth.workspace import Workspace
from test_latents import tiles_template  # noqa: F401  (session fixture: real tiles + embeddings)

PIPELINE_FILE = str(Path(__file__).resolve().parents[1] / "src" / "histosynth" / "sample" / "pipeline.py")
PROMPTS = ["invasive ductal carcinoma, grade 3", "dense lymphocytic infiltrate", "fibrous stroma"]
TINY_RUN = [
    "vae.block_out_channels=[16,32,32]", "vae.steps=60", "vae.batch_size=8", "vae.lr=2e-3", "vae.scale_tiles=32",
    "vae.eval_tiles=8", "vae.dihedral_check_tiles=0", "vae.cache_dihedral=false",
    "unet.block_out_channels=[32,64]", "unet.cross_attention_levels=[false,true]", "unet.layers_per_block=1",
    "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=2", "train.validation_images=0",
    "train.heldout_tiles=16", "train.steps=100", "train.checkpoint_every=100",
    "sample.steps=10", "sample.batch_size=3",
]


@pytest.fixture(scope="session")
def trained_run(tiles_template, tmp_path_factory) -> Path:  # noqa: F811
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.vae import train_vae
    from histosynth.train.trainer import train

    root = tmp_path_factory.mktemp("trained") / "ws"
    shutil.copytree(tiles_template, root)
    ws, cfg = Workspace(root), load_config("tiny-cpu", overrides=TINY_RUN)
    train_vae(ws, cfg)
    encode_workspace(ws, cfg)
    run = train(ws, cfg, budget=35, run_name="tiny")
    results = RunFolder(run).read_config() and __import__("json").loads(RunFolder(run).manifest_path.read_text())["results"]
    assert results["heldout_loss"] < 0.5 * results["heldout_zero_baseline"]  # it learned something
    return run


def diffusers_pipeline(run: Path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(run, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)


def test_diffusers_loads_a_trained_run_and_matches_histosynth_sample(trained_run, tmp_path):
    # Pixel identity is a claim at one thread count: CPU kernels may round differently when the
    # work is split over 2 threads (seen under CI's HISTOSYNTH_TEST_THREADS=2). Pin one thread here.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _identity_check(trained_run, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _identity_check(trained_run, tmp_path):
    out = sample_run(trained_run, PROMPTS, n=3, seed=7, out_dir=tmp_path / "cli")
    pipe = diffusers_pipeline(trained_run)
    assert type(pipe).__name__ == "HistoSynthPipeline" and pipe.uses_ema
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the run's sampler, not the training DDPM
    images = pipe(prompt=PROMPTS, seed=[7, 8, 9], output_type="np").images
    for i, image in enumerate(images):
        np.testing.assert_array_equal(image, load_rgb(out / f"{i:05d}.png"))  # pixel-identical
    assert images.shape == (3, 64, 64, 3) and images.std() > 10  # not a flat picture
    latents = pipe(prompt=PROMPTS[0], seed=7, output_type="latent").images
    assert latents.shape == (1, 4, 16, 16)
    # PIL output is the same pixels as numpy output. Same batch: CPU kernels may round a batch of 1
    # differently from a batch of 3 (one value off by 1/255 in CI), which is not what this checks.
    pil = pipe(prompt=PROMPTS, seed=[7, 8, 9]).images
    for image, array in zip(pil, images):
        np.testing.assert_array_equal(np.asarray(image), array)


def test_save_pretrained_round_trip_with_model_card(trained_run, tmp_path):
    pipe = diffusers_pipeline(trained_run)
    pipe.save_pretrained(tmp_path / "saved")
    saved = RunFolder(tmp_path / "saved")
    assert saved.read_condition() == pipe.condition
    assert saved.read_model_index()["text_encoder"] == ["histosynth.sample.components", "HistoSynthTextEncoder"]
    card = saved.model_card_path.read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["histosynth"]["preset"] == "tiny-cpu"
    assert "heldout_loss" in meta["histosynth"]["metrics"] and meta["license"] == "other"
    for section in ("## Training data", "## Intended use", "## Limitations", "licence: unknown"):
        assert section in card
    again = diffusers_pipeline(saved.path)
    a = pipe(prompt=PROMPTS[:2], seed=[1, 2], output_type="np").images
    np.testing.assert_array_equal(again(prompt=PROMPTS[:2], seed=[1, 2], output_type="np").images, a)


def test_callback_progress_bar_and_device(trained_run, capsys):
    pipe = diffusers_pipeline(trained_run).to("cpu")
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, int(t), tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"] * 0} if step == len(p.scheduler.timesteps) - 1 else tensors

    pipe(prompt=PROMPTS[0], seed=3, num_inference_steps=4)
    assert "4/4" in capsys.readouterr().err  # diffusers' progress bar over the steps
    pipe.set_progress_bar_config(disable=True)
    flat = pipe(prompt=PROMPTS[0], seed=3, num_inference_steps=4, callback_on_step_end=callback, output_type="np").images
    assert [s for s, _, _ in seen] == [0, 1, 2, 3] and seen[0][2] == (1, 4, 16, 16)
    assert seen[0][1] > seen[-1][1]  # timesteps count down
    normal = pipe(prompt=PROMPTS[0], seed=3, num_inference_steps=4, output_type="np").images
    assert not np.array_equal(flat, normal)  # the callback's latents were used
    assert "4/4" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="output_type"):
        pipe(prompt="x", output_type="tensor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs a GPU")
def test_model_cpu_offload_gives_the_same_images(trained_run):
    pipe = diffusers_pipeline(trained_run).to("cuda")
    on_gpu = pipe(prompt=PROMPTS, seed=[1, 2, 3], output_type="np").images
    offloaded = diffusers_pipeline(trained_run)
    offloaded.enable_model_cpu_offload()
    images = offloaded(prompt=PROMPTS, seed=[1, 2, 3], output_type="np").images
    assert np.abs(images.astype(int) - on_gpu.astype(int)).max() <= 1
    assert offloaded.unet.device.type == "cpu"  # moved back after the call


@pytest.mark.unit
def test_decode_ramp_cross_fades_to_a_partition_of_unity():
    """The tiled decoder's weights (no trained run): 1 in a tile's middle, symmetric, positive, and two
    tiles overlapping by `overlap` px weigh every overlap pixel to exactly 1 between them."""
    from histosynth.sample.pipeline import _ramp

    torch.testing.assert_close(_ramp(16, 0), torch.ones(16))
    for length, overlap in ((16, 8), (32, 8), (64, 32), (12, 5)):
        ramp = _ramp(length, overlap)
        assert ramp.shape == (length,) and bool((ramp > 0).all()) and bool((ramp <= 1).all())
        torch.testing.assert_close(ramp, ramp.flip(0))
        assert bool((ramp[overlap:length - overlap] == 1).all())
        torch.testing.assert_close(ramp[length - overlap:] + ramp[:overlap], torch.ones(overlap))
