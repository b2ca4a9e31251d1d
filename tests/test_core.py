"""Core modules: atomic writes, tokenizers, schedules and the guided denoising loop, image I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histosynth.config import load_config
from histosynth.fileio import atomic_path, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{") and len(list(tmp_path.iterdir())) == 1


def test_clip_token_counts_exclude_start_and_end():
    from histosynth.tokenizers import load_tokenizer

    tok = load_tokenizer("openai/clip-vit-base-patch32")
    assert tok.name == "clip-bpe" and tok.max_positions == 77
    assert tok.count("invasive ductal carcinoma") == 4  # invasive, duc, tal, carcinoma
    assert tok.decode(tok.encode("Grade 3.")) == "grade 3 ."


def test_minilm_tokenizer_is_packaged_wordpiece():
    from histosynth.tokenizers import load_tokenizer

    tok = load_tokenizer("minilm")
    assert tok.name == "minilm" and tok.max_positions == 512
    assert tok.count("invasive ductal carcinoma") == len(tok.encode("invasive ductal carcinoma")) >= 3
    assert tok.bos_id == 101 and tok.eos_id == 102  # [CLS], [SEP]


def test_ddim_timesteps_match_compvis_spacing():
    from histosynth.schedules import sampling_scheduler, training_scheduler

    base = training_scheduler(load_config("pathldm").diffusion)
    ddim = sampling_scheduler(base.config, "ddim")
    ddim.set_timesteps(50)
    # CompVis make_ddim_timesteps('uniform', 50, 1000) + 1 = 1, 21, ..., 981
    assert ddim.timesteps.tolist() == list(range(981, 0, -20))
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False


class _ToyUNet(torch.nn.Module):
    """eps = 0.1 * x + mean of the context: enough to see guidance act."""

    def forward(self, x, t, encoder_hidden_states=None, encoder_attention_mask=None):
        ctx = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return type("Out", (), {"sample": 0.1 * x + ctx})()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_denoise_is_deterministic_and_guidance_moves_samples(sampler):
    from histosynth.schedules import denoise, sampling_scheduler, training_scheduler

    base = training_scheduler(load_config("tiny-cpu").diffusion).config
    cond, uncond = torch.full((2, 4, 8), 0.5), torch.zeros(2, 4, 8)

    def run(guidance, seed=0):
        noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        return denoise(_ToyUNet(), sampling_scheduler(base, sampler), noise, cond, uncond, steps=10, guidance=guidance)

    a, b = run(2.0), run(2.0)
    assert torch.equal(a, b)
    assert not torch.allclose(run(1.0), a)
    assert not torch.allclose(run(2.0, seed=1), a)


def test_contact_sheet_and_png_provenance(tmp_path):
    from histosynth.imageio import contact_sheet, png_metadata, save_png, to_uint8, to_unit_range

    imgs = [np.full((8, 8, 3), i * 40, dtype=np.uint8) for i in range(5)]
    sheet = contact_sheet(imgs, columns=3, pad=1)
    assert sheet.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    save_png(tmp_path / "x.png", sheet, {"synthetic": "true", "seed": 3})
    assert png_metadata(tmp_path / "x.png") == {"synthetic": "true", "seed": "3"}
    back = to_uint8(to_unit_range(np.stack(imgs)))
    assert np.array_equal(back, np.stack(imgs))
