"""convert-pathldm against the CompVis originals.

Tiny CompVis-format models with PathLDM's topology (channel multipliers 1,2,3,5, one head, attention
at downsample 8,4,2; VQ f=4 with 3 latent channels and 8192 codes; a CLIP text tower) are built from
the `ldm` package of `stable-diffusion-sdkit` (a test-only dependency), every parameter randomised,
packed with PathLDM's key prefixes into a fake Lightning checkpoint, converted, and compared output for
output with the originals, down to a whole guided DDIM run of the original sampler.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from histosynth.console import HistosynthError
from histosynth.fileio import read_json, sha256_file
from histosynth.runfolder import RunFolder

ATOL = 1e-5


def _ldm():
    try:
        import ldm.modules.diffusionmodules.openaimodel  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("stable-diffusion-sdkit (the CompVis `ldm` package) is missing under CI=true")
        pytest.skip("needs stable-diffusion-sdkit==2.1.5 installed with --no-deps (CompVis `ldm`)")


_ldm()

from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402
from ldm.modules.diffusionmodules.model import Decoder, Encoder  # noqa: E402
from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from ldm.modules.diffusionmodules.util import (  # noqa: E402
    make_beta_schedule, make_ddim_sampling_parameters, make_ddim_timesteps)

# PathLDM's text-conditioned config (plip_imagenet_finetune.yaml) with tiny widths.
TINY_YAML = {
    "model": {
        "base_learning_rate": 2.5e-5,
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.0015, "linear_end": 0.0195, "num_timesteps_cond": 1, "timesteps": 1000,
            "first_stage_key": "image", "cond_stage_key": "caption", "image_size": 16, "channels": 3,
            "cond_stage_trainable": False, "conditioning_key": "crossattn", "use_ema": False,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 16, "in_channels": 3, "out_channels": 3, "model_channels": 32,
                    "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 5],
                    "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1,
                    "context_dim": 64, "use_checkpoint": True, "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.VQModelInterface",
                "params": {
                    "embed_dim": 3, "n_embed": 8192,
                    "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 64, "in_channels": 3,
                                 "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 4], "num_res_blocks": 2,
                                 "attn_resolutions": [], "dropout": 0.0},
                    "lossconfig": {"target": "torch.nn.Identity"},
                },
            },
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                "params": {"version": "vinid/plip", "max_length": 154},
            },
        },
    },
}
PROMPTS = ["high tumor; low til; invasive ductal carcinoma, grade 3, er positive, her2 negative.",
           "low tumor; high til; " + "dense lymphocytic infiltrate around the tumour nests, " * 6]


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (CompVis zero-initialises output convs, which would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                bound = 1 / math.sqrt(p[0].numel())
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


class CompVisVQ(torch.nn.Module):
    """CompVis VQModelInterface (taming's VectorQuantizer2) from the `ldm` Encoder/Decoder."""

    def __init__(self, ddconfig: dict, embed_dim: int, n_embed: int):
        super().__init__()
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quantize = torch.nn.Module()
        self.quantize.embedding = torch.nn.Embedding(n_embed, embed_dim)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, h, force_not_quantize=False):
        if not force_not_quantize:
            z = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            codes = self.quantize.embedding.weight
            d = z.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * z @ codes.T
            h = codes[d.argmin(1)].view(h.shape[0], h.shape[2], h.shape[3], -1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(h))


def clip_ids(texts: list[str], length: int = 154) -> tuple[torch.Tensor, torch.Tensor]:
    """PathLDM's tokenizer call (HF CLIP: truncate, pad with the end token) via open_clip's own BPE."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    sot, eot = bpe.encoder["<start_of_text>"], bpe.encoder["<end_of_text>"]
    ids = torch.full((len(texts), length), eot)
    mask = torch.zeros((len(texts), length), dtype=torch.long)
    for i, text in enumerate(texts):
        row = [sot, *bpe.encode(text)[: length - 2], eot]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def pathldm_text(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PathLDM's clip_transformer_forward on the ORIGINAL module: each 77-token chunk embedded with
    positions 0-76, one encoder pass under a causal mask over all 154 tokens plus the padding mask
    (`_make_causal_mask` + `_expand_mask`, both filled with the dtype's minimum), final layer norm."""
    hidden = torch.cat([model.embeddings(input_ids=chunk) for chunk in ids.split(77, dim=1)], dim=1)
    length, low = hidden.shape[1], torch.finfo(hidden.dtype).min
    causal = torch.full((length, length), low).triu(1)[None, None]
    padding = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * low
    out = model.encoder(inputs_embeds=hidden, attention_mask=causal + padding).last_hidden_state
    return model.final_layer_norm(out)


class ShimLatentDiffusion:
    """What the original DDIMSampler reads from a LatentDiffusion, around the CompVis U-Net."""

    parameterization = "eps"

    def __init__(self, unet, betas):
        self.unet = unet
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=betas.dtype), self.alphas_cumprod[:-1]])
        self.device = "cpu"

    def apply_model(self, x, t, c):
        return self.unet(x, t, context=c)


@pytest.fixture(scope="module")
def originals():
    from transformers import CLIPTextConfig, CLIPTextModel

    params = TINY_YAML["model"]["params"]
    torch.manual_seed(0)
    unet_args = {k: v for k, v in params["unet_config"]["params"].items()}
    unet_args["use_checkpoint"] = False  # same keys; checkpointing only matters when training
    unet = randomize(UNetModel(**unet_args), seed=1)
    first = params["first_stage_config"]["params"]
    vq = randomize(CompVisVQ(first["ddconfig"], first["embed_dim"], first["n_embed"]), seed=2)
    clip = randomize(CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)), seed=3)
    return {"unet": unet, "vq": vq, "clip": clip}


def schedule_buffers(params: dict) -> dict[str, torch.Tensor]:
    """DDPM.register_schedule's buffers (a subset), as they sit in the Lightning state_dict."""
    betas = make_beta_schedule("linear", params["timesteps"], params["linear_start"], params["linear_end"])
    alphas_cumprod = torch.cumprod(torch.tensor(1 - betas), 0)
    return {"betas": torch.tensor(betas, dtype=torch.float32), "alphas_cumprod": alphas_cumprod.float(),
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float()}


def lightning_state(originals: dict, params: dict) -> dict[str, torch.Tensor]:
    state = {f"model.diffusion_model.{k}": v for k, v in originals["unet"].state_dict().items()}
    state |= {f"first_stage_model.{k}": v for k, v in originals["vq"].state_dict().items()}
    # transformers < 5.6 kept CLIPTextModel under `text_model.` with a persistent position_ids buffer
    state |= {f"cond_stage_model.transformer.text_model.{k}": v for k, v in originals["clip"].state_dict().items()}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state |= schedule_buffers(params)
    state |= {"inception.Mixed_5b.branch1x1.conv.weight": torch.randn(64, 192, 1, 1),
              "inception.Mixed_5b.branch1x1.bn.running_mean": torch.randn(64)}
    return state


@pytest.fixture(scope="module")
def converted(originals, tmp_path_factory):
    from histosynth.convert.pathldm import convert_pathldm

    root = tmp_path_factory.mktemp("pathldm")
    yaml_path = root / "tiny_pathldm.yaml"
    yaml_path.write_text(yaml.safe_dump(TINY_YAML))
    ckpt = root / "epoch=000003.ckpt"
    state = lightning_state(originals, TINY_YAML["model"]["params"])
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.4.2"}, ckpt)
    results = convert_pathldm(ckpt, yaml_path, root / "run")
    return {"run": root / "run", "ckpt": ckpt, "yaml": yaml_path, "state": state, "results": results}


@torch.no_grad()
def test_unet_matches_compvis(originals, converted):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(converted["run"] / "unet").eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    context = torch.randn(2, 154, 64, generator=gen)
    for t in (torch.tensor([1, 981]), torch.tensor([500, 37])):
        want = originals["unet"](x, t, context=context)
        got = unet(x, t, encoder_hidden_states=context).sample
        assert want.abs().mean() > 0.1  # random output layers: a real signal, not zeros
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_vq_encode_decode_matches_compvis(originals, converted):
    from diffusers import VQModel

    vae = VQModel.from_pretrained(converted["run"] / "vae").eval()
    assert vae.config.scaling_factor == 1.0  # PathLDM's; diffusers' 0.18215 default would be wrong
    assert vae.config.num_vq_embeddings == 8192 and vae.config.vq_embed_dim == 3
    torch.testing.assert_close(vae.quantize.embedding.weight, originals["vq"].quantize.embedding.weight)
    # float64: in float32 a random 20-layer decoder alone differs by 1.3e-5 at outputs of about 2
    # (conv and attention kernels sum in other orders); a mapping error would be orders larger.
    vae, original = vae.double(), copy.deepcopy(originals["vq"]).double()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    want = original.encode(x)
    got = vae.encode(x).latents
    assert got.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    for force in (False, True):
        decoded = vae.decode(got, force_not_quantize=force).sample
        assert decoded.abs().max() > 0.5
        torch.testing.assert_close(decoded, original.decode(want, force_not_quantize=force), atol=ATOL, rtol=0)


@torch.no_grad()
def test_text_encoder_matches_pathldm_chunked_clip(originals, converted):
    from histosynth.text.encoders import load_encoder

    encoder = load_encoder(str(converted["run"] / "text_encoder"))
    texts = PROMPTS + [""]
    ids, mask = clip_ids(texts)
    assert mask[1].sum() > 77  # the second prompt really spills into the second chunk
    encoded = encoder.encode(texts, context_length=154, long_context="chunked")
    torch.testing.assert_close(encoded.mask, mask)
    want = pathldm_text(originals["clip"], ids, mask)
    torch.testing.assert_close(encoded.hidden, want, atol=ATOL, rtol=0)


def test_tokenizer_is_openai_clip_bpe(converted):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted["run"] / "text_encoder")
    bpe = SimpleTokenizer()
    for text in PROMPTS + ["ER+/PR-, HER2 (2+) Ki-67 30%; naïve café"]:
        assert tok(text)["input_ids"] == [49406, *bpe.encode(text), 49407]
    assert tok.pad_token_id == 49407 and len(tok) == 49408


def test_ddim_matches_compvis_sampler():
    """The run's scheduler, made DDIM by the sampling code, walks CompVis' 50 DDIM steps exactly."""
    from histosynth.config import load_config
    from histosynth.schedules import sampling_scheduler, training_scheduler

    params = TINY_YAML["model"]["params"]
    base = training_scheduler(load_config("pathldm").diffusion).config
    ddim = sampling_scheduler(base, "ddim")
    ddim.set_timesteps(50)
    steps = make_ddim_timesteps("uniform", 50, 1000, verbose=False)
    assert ddim.timesteps.tolist() == steps[::-1].tolist()
    assert steps[-1] == 981 and steps[0] == 1
    betas = make_beta_schedule("linear", 1000, params["linear_start"], params["linear_end"])
    alphas_cumprod = torch.cumprod(torch.tensor(1 - betas), 0)
    _, alphas, alphas_prev = make_ddim_sampling_parameters(alphas_cumprod.numpy(), steps, eta=0.0, verbose=False)
    torch.testing.assert_close(ddim.alphas_cumprod[steps].double(), torch.tensor(alphas), atol=1e-6, rtol=0)
    prev = [ddim.alphas_cumprod[t - 20] if t >= 20 else ddim.final_alpha_cumprod for t in steps]
    torch.testing.assert_close(torch.stack(prev).double(), torch.tensor(alphas_prev), atol=1e-6, rtol=0)


@torch.no_grad()
def test_guided_ddim_run_matches_compvis(originals, converted):
    """HistoSynthPipeline on the run folder == PathLDM's sampling (original DDIMSampler, guidance 1.5
    with "" as the unconditional text, eta 0) from the same noise, latents and decoded images."""
    from histosynth.sample.pipeline import HistoSynthPipeline

    pipe = HistoSynthPipeline.from_pretrained(converted["run"], device="cpu")
    assert (pipe.defaults.steps, pipe.defaults.guidance, pipe.defaults.eta) == (50, 1.5, 0.0)
    seeds = [11, 12]
    out = pipe(PROMPTS, num_inference_steps=4, seed=seeds, output_type="latent")

    ids, mask = clip_ids(PROMPTS + [""])
    context = pathldm_text(originals["clip"], ids, mask)
    noise = torch.cat([torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])
    betas = torch.tensor(make_beta_schedule("linear", 1000, 0.0015, 0.0195))
    sampler = DDIMSampler(ShimLatentDiffusion(originals["unet"], betas))
    want, _ = sampler.sample(S=4, batch_size=2, shape=(3, 16, 16), conditioning=context[:2], eta=0.0, x_T=noise,
                             unconditional_guidance_scale=1.5, unconditional_conditioning=context[2:].expand(2, -1, -1),
                             verbose=False)
    torch.testing.assert_close(out.images, want.float(), atol=1e-4, rtol=0)  # 4 chained steps of 1e-6 errors
    # images in [-1, 1], as CompVis' samplers clamp them too
    images = originals["vq"].decode(out.images).clamp(-1, 1)
    torch.testing.assert_close(pipe.decode_latents(out.images), images, atol=1e-4, rtol=0)


def test_run_folder_contract(converted):
    from histosynth.config import load_config

    run, results = converted["run"], converted["results"]
    folder = RunFolder(run)
    for part in (folder.config_path, folder.model_index_path, folder.unet_dir / "config.json",
                 folder.vae_dir / "config.json", folder.scheduler_dir / "scheduler_config.json", folder.condition_path,
                 folder.text_encoder_dir / "config.json", folder.manifest_path, folder.model_card_path):
        assert part.exists(), part
    condition = folder.read_condition()
    assert (condition.encoder, condition.context_length, condition.long_context, condition.attend_padding,
            condition.template, condition.levels, condition.budget, condition.width) == (
        "text_encoder", 154, "chunked", True, "{tumor} tumor; {til} til; {summary}", ("low", "high"), None, 64)
    assert folder.read_model_index()["text_encoder"] == ["histosynth.sample.components", "HistoSynthTextEncoder"]
    card = folder.model_card_path.read_text()
    assert card.startswith("---\nlibrary_name: diffusers") and "PathLDM" in card and "epoch=000003.ckpt" in card
    cfg = load_config(file=run / "histosynth.yaml")
    assert cfg.unet.block_out_channels == [32, 64, 96, 160]
    assert cfg.unet.cross_attention_levels == [False, True, True, True]
    assert cfg.unet.attention_head_dim is None and cfg.vae.kind == "vq" and cfg.vae.latent_channels == 3
    diffusion = cfg.diffusion
    assert (diffusion.beta_schedule, diffusion.beta_start, diffusion.beta_end) == ("scaled_linear", 0.0015, 0.0195)
    assert cfg.vae.pretrained == str(run / "vae") and cfg.slides.size == 64
    assert read_json(run / "scheduler/scheduler_config.json")["_class_name"] == "DDPMScheduler"

    source = read_json(run / "model_index.json")["source_checkpoint"]
    assert source["file"] == "epoch=000003.ckpt" and source["sha256"] == sha256_file(converted["ckpt"])
    manifest = read_json(run / "manifest.json")
    assert manifest["status"] == "ok" and manifest["results"]["source_checkpoint"] == source
    # every model key converted but position_ids (checked, then reported with inception and the schedule)
    counts = manifest["results"]["converted_keys"]
    assert sum(counts.values()) + 1 == sum(k.startswith(("model.", "first_stage_model.", "cond_stage_model."))
                                           for k in converted["state"])
    assert manifest["results"]["ignored_keys"] == {"inception": 2, "schedule buffers": 3, "text buffers": 1}
    assert results["parameters"]["text_encoder"] == sum(p.numel() for p in _clip_params(converted))


@torch.no_grad()
def test_train_stage_builds_the_same_unet(converted):
    """`histosynth train` rebuilds the U-Net from histosynth.yaml: the converted weights must fit it."""
    from diffusers import UNet2DConditionModel

    from histosynth.config import load_config
    from histosynth.train.unet import build_unet

    cfg = load_config(file=converted["run"] / "histosynth.yaml")
    rebuilt = build_unet(cfg, cross_attention_dim=64, latent_channels=3, sample_size=16).eval()
    unet = UNet2DConditionModel.from_pretrained(converted["run"] / "unet").eval()
    rebuilt.load_state_dict(unet.state_dict(), strict=True)
    x, t, context = torch.randn(1, 3, 16, 16), torch.tensor([250]), torch.randn(1, 154, 64)
    torch.testing.assert_close(rebuilt(x, t, context).sample, unet(x, t, context).sample, atol=ATOL, rtol=0)


def _clip_params(converted):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(converted["run"] / "text_encoder").parameters()


def test_leftover_and_missing_keys_are_errors(converted):
    from histosynth.convert.pathldm import convert_unet, convert_vq, read_pathldm_yaml, split_state

    params = read_pathldm_yaml(converted["yaml"])
    groups, _ = split_state(converted["state"])
    with pytest.raises(HistosynthError, match="input_blocks.1.7.weight"):
        convert_unet(groups["unet"] | {"input_blocks.1.7.weight": torch.zeros(1)}, params)
    vq = dict(groups["vae"])
    del vq["quantize.embedding.weight"]
    with pytest.raises(HistosynthError, match="missing quantize.embedding.weight"):
        convert_vq(vq, params, 1.0)


def test_text_encoder_option_and_absent_weights(converted, tmp_path):
    from histosynth.convert.pathldm import convert_pathldm

    results = convert_pathldm(converted["ckpt"], converted["yaml"], tmp_path / "given",
                              text_encoder=str(converted["run"] / "text_encoder"))
    assert RunFolder(tmp_path / "given").read_condition().encoder == str(converted["run"] / "text_encoder")
    assert not (tmp_path / "given" / "text_encoder").exists()
    assert results["ignored_keys"]["cond_stage_model (replaced by --text-encoder)"] == sum(
        k.startswith("cond_stage_model.") for k in converted["state"])

    # no text weights: the YAML's encoder is named; a scale_by_std buffer becomes the VQ scaling factor
    state = {k: v for k, v in converted["state"].items() if not k.startswith("cond_stage_model.")}
    torch.save({"state_dict": state | {"scale_factor": torch.tensor(0.5)}}, tmp_path / "no_text.ckpt")
    results = convert_pathldm(tmp_path / "no_text.ckpt", converted["yaml"], tmp_path / "yaml_named")
    assert RunFolder(tmp_path / "yaml_named").read_condition().encoder == "vinid/plip"
    assert "vinid/plip" in (tmp_path / "yaml_named" / "histosynth.yaml").read_text()
    assert read_json(tmp_path / "yaml_named" / "vae" / "config.json")["scaling_factor"] == 0.5
    assert results["ignored_keys"] == {"inception": 2, "schedule buffers": 3}


def test_schedule_mismatch_is_an_error(converted, tmp_path):
    from histosynth.convert.pathldm import convert_pathldm

    other = dict(TINY_YAML, model=dict(TINY_YAML["model"], params=dict(TINY_YAML["model"]["params"], linear_end=0.012)))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(HistosynthError, match="betas"):
        convert_pathldm(converted["ckpt"], tmp_path / "other.yaml", tmp_path / "run")
    assert read_json(tmp_path / "run" / "manifest.json")["status"] == "failed"
    assert not (tmp_path / "run" / "unet").exists()


def test_pickled_objects_need_trust(tmp_path):
    from histosynth.convert.checkpoint import load_state_dict

    ckpt = tmp_path / "hparams.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.ones(3)},
                "hyper_parameters": argparse.Namespace(lr=2.5e-5)}, ckpt)
    with pytest.raises(HistosynthError, match="--trust-checkpoint"):
        load_state_dict(ckpt)
    assert torch.equal(load_state_dict(ckpt, trust=True)["model.diffusion_model.out.2.bias"], torch.ones(3))


@pytest.mark.unit
def test_random_bytes_are_not_a_checkpoint(tmp_path):
    """Not a pickle with objects: --trust-checkpoint would not help, so it is not advised."""
    from histosynth.convert.checkpoint import load_state_dict

    for name, head in (("random.ckpt", b""), ("proto.ckpt", b"\x80\x02")):
        path = tmp_path / name
        path.write_bytes(head + np.random.default_rng(0).bytes(4096))
        with pytest.raises(HistosynthError, match="not a PyTorch checkpoint") as err:
            load_state_dict(path)
        assert "--trust-checkpoint" not in str(err.value)
        with pytest.raises(HistosynthError, match="not a PyTorch checkpoint"):
            load_state_dict(path, trust=True)


def test_trusted_load_survives_missing_packages(tmp_path, monkeypatch):
    """Lightning files pickle classes of packages histosynth does not need (pytorch_lightning)."""
    from histosynth.convert.checkpoint import load_state_dict

    (tmp_path / "gone_lightning.py").write_text("class AttributeDict(dict):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_lightning

    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"betas": torch.zeros(2)}, "hparams": gone_lightning.AttributeDict(lr=1)}, ckpt)
    monkeypatch.delitem(sys.modules, "gone_lightning")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    assert list(load_state_dict(ckpt, trust=True)) == ["betas"]


def test_cli_refuses_untrusted_pickle_in_one_line(converted, tmp_path):
    ckpt = tmp_path / "hparams.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=1)}, ckpt)
    exe = Path(sys.executable).with_name("histosynth")
    done = subprocess.run([str(exe), "convert-pathldm", str(ckpt), "--ldm-config", str(converted["yaml"]),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "--trust-checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_cli_old_config_spelling_names_ldm_config(converted, tmp_path):
    exe = Path(sys.executable).with_name("histosynth")
    done = subprocess.run([str(exe), "convert-pathldm", str(converted["ckpt"]), "--config", str(converted["yaml"]),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "--ldm-config" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_set_changes_only_the_sampling_defaults(converted, tmp_path):
    from histosynth.config import ConfigError
    from histosynth.convert.pathldm import convert_pathldm
    from histosynth.runfolder import RunFolder

    convert_pathldm(converted["ckpt"], converted["yaml"], tmp_path / "run", overrides=["sample.steps=20"])
    assert RunFolder(tmp_path / "run").read_config().sample.steps == 20
    with pytest.raises(ConfigError, match="may change only sample"):
        convert_pathldm(converted["ckpt"], converted["yaml"], tmp_path / "run2", overrides=["unet.layers_per_block=3"])
    assert not (tmp_path / "run2").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HISTOSYNTH_SLOW") != "1", reason="full-size U-Net; set HISTOSYNTH_SLOW=1")
@torch.no_grad()
def test_full_size_pathldm_unet():
    """PathLDM's real U-Net size (about 401 M parameters): converts, loads strictly, same output."""
    import time

    from diffusers import UNet2DConditionModel  # noqa: F401 - import once, outside the timing

    from histosynth.convert.pathldm import convert_unet
    from histosynth.manifest import PeakMemory

    params = {"unet_config": {"params": dict(TINY_YAML["model"]["params"]["unet_config"]["params"],
                                             image_size=64, model_channels=192, context_dim=512, use_checkpoint=False)}}
    original = randomize(UNetModel(**params["unet_config"]["params"]), seed=6)
    state = original.state_dict()
    with PeakMemory() as memory:
        start = time.perf_counter()
        unet = convert_unet(state, params)
        seconds = time.perf_counter() - start
    n = sum(p.numel() for p in unet.parameters())
    print(f"full-size U-Net: {n / 1e6:.1f} M parameters converted in {seconds:.1f} s, "
          f"peak RSS {memory.peak / 2**30:.2f} GiB ({(memory.peak - memory.baseline) / 2**30:.2f} GiB above start)")
    assert 395e6 < n < 410e6
    gen = torch.Generator().manual_seed(7)
    x, context = torch.randn(1, 3, 64, 64, generator=gen), torch.randn(1, 154, 512, generator=gen)
    t = torch.tensor([501])
    torch.testing.assert_close(unet(x, t, encoder_hidden_states=context).sample,
                               original(x, t, context=context), atol=1e-4, rtol=0)


def test_samples_of_a_converted_run_name_the_source_checkpoint(converted, tmp_path):
    from histosynth.imageio import list_images, png_metadata
    from histosynth.sample.generate import sample_run

    out = sample_run(converted["run"], ["high tumor; low til; invasive ductal carcinoma."], n=1, steps=2,
                     out_dir=tmp_path / "samples")
    meta = png_metadata(list_images(out)[0])
    source = read_json(converted["run"] / "model_index.json")["source_checkpoint"]
    assert meta["synthetic"] == "true" and meta["source_checkpoint"] == f"{source['file']} sha256:{source['sha256']}"
