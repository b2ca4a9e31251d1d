"""Import a PathLDM checkpoint (CompVis latent diffusion on PyTorch Lightning) as a histosynth run.

PathLDM keeps its three networks in one Lightning `state_dict`: the U-Net under
`model.diffusion_model.`, the f=4 VQ first stage under `first_stage_model.`, and the frozen CLIP text
tower under `cond_stage_model.transformer.text_model.`; next to them sit the noise-schedule buffers
and an InceptionV3 used for FID during training (`inception.`). The model configs are built from
PathLDM's own YAML (diffusers' single-file loader mistakes this U-Net for an upscaler), every key under
the three model prefixes must land in a model that is then loaded strictly, and the rest is reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from .. import config as hs_config
from ..console import HistosynthError, info, warn
from ..fileio import atomic_dir, sha256_file
from ..manifest import recording
from ..runfolder import Condition, RunFolder, pipeline_components
from .checkpoint import load_state_dict
from .ldm_keys import is_vae_attention_projection, unet_key, vae_key

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# DDPM.register_schedule buffers: recomputed by the scheduler, only checked against it here.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar",
)
TEMPLATE = "{tumor} tumor; {til} til; {summary}"  # PathLDM's condition text
LEVELS = ["low", "high"]
CLIP_POSITIONS = 77
CLIP_HEAD_WIDTH = 64  # every OpenAI CLIP text tower (and PLIP) uses 64 channels per head


# ---------------------------------------------------------------- configs from PathLDM's YAML

def read_pathldm_yaml(path: str | Path) -> dict[str, Any]:
    """`model.params` of a PathLDM / latent-diffusion config, checked for what the converter handles."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        params = data["model"]["params"]
        for section in ("unet_config", "first_stage_config", "cond_stage_config"):
            params[section]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise HistosynthError(f"{path}: not a latent-diffusion config with model.params.unet_config, "
                              f"first_stage_config and cond_stage_config ({exc.__class__.__name__}: {exc})") from None
    _require(path, params.get("conditioning_key") == "crossattn",
             "conditioning_key must be crossattn (text-conditioned)")
    _require(path, params.get("parameterization", "eps") == "eps", "only eps-prediction models are supported")
    _require(path, params.get("beta_schedule", "linear") == "linear", "only the 'linear' beta schedule is supported")
    unet = params["unet_config"]["params"]
    _require(path, bool(unet.get("use_spatial_transformer")) and unet.get("context_dim") is not None,
             "unet_config must use the spatial transformer with a context_dim")
    _require(path, not unet.get("resblock_updown") and not unet.get("use_scale_shift_norm")
             and unet.get("num_classes") is None and not unet.get("use_linear_in_transformer"),
             "resblock_updown, use_scale_shift_norm, num_classes and use_linear_in_transformer are not supported")
    _require(path, isinstance(unet.get("num_res_blocks"), int), "num_res_blocks must be one integer")
    first = params["first_stage_config"]
    _require(path, str(first.get("target", "")).split(".")[-1] in ("VQModelInterface", "VQModel"),
             "first_stage_config must be a VQ autoencoder (VQModelInterface)")
    _require(path, not first["params"]["ddconfig"].get("attn_resolutions"),
             "first-stage attention outside the middle block (attn_resolutions) is not supported")
    return params


def _require(path: Path, ok: bool, problem: str) -> None:
    if not ok:
        raise HistosynthError(f"{path}: {problem}")


def attention_heads(unet: dict) -> list[int]:
    """Heads per U-Net level as openaimodel.py counts them (num_heads, or width // num_head_channels)."""
    channels = [unet["model_channels"] * m for m in unet["channel_mult"]]
    per_head = unet.get("num_head_channels", -1)
    return [c // per_head if per_head != -1 else unet["num_heads"] for c in channels]


def unet_config(params: dict) -> dict[str, Any]:
    """diffusers UNet2DConditionModel arguments for a CompVis `openaimodel.UNetModel`."""
    u = params["unet_config"]["params"]
    levels = len(u["channel_mult"])
    attends = [2 ** level in u["attention_resolutions"] for level in range(levels)]
    heads = attention_heads(u)
    return dict(
        sample_size=u["image_size"],
        in_channels=u["in_channels"],
        out_channels=u["out_channels"],
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        block_out_channels=[u["model_channels"] * m for m in u["channel_mult"]],
        layers_per_block=u["num_res_blocks"],
        cross_attention_dim=u["context_dim"],
        # diffusers' `attention_head_dim` is, for historical reasons, the number of heads.
        attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
        transformer_layers_per_block=u.get("transformer_depth", 1),
        use_linear_projection=False,      # CompVis' SpatialTransformer projects with 1x1 convs
        norm_num_groups=32,               # GroupNorm32 throughout openaimodel.py
        norm_eps=1e-5,
        flip_sin_to_cos=True,             # timestep_embedding is [cos, sin]
        freq_shift=0,
    )


def vq_config(params: dict, scaling_factor: float) -> dict[str, Any]:
    """diffusers VQModel arguments for a CompVis VQModelInterface (attention only in the mid blocks)."""
    first = params["first_stage_config"]["params"]
    dd = first["ddconfig"]
    levels = len(dd["ch_mult"])
    return dict(
        in_channels=dd["in_channels"],
        out_channels=dd["out_ch"],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[dd["ch"] * m for m in dd["ch_mult"]],
        layers_per_block=dd["num_res_blocks"],
        latent_channels=dd["z_channels"],
        sample_size=dd["resolution"],
        num_vq_embeddings=first["n_embed"],
        vq_embed_dim=first["embed_dim"],
        norm_num_groups=32,
        norm_type="group",
        scaling_factor=scaling_factor,
    )


def context_length(params: dict) -> int:
    """PathLDM rounds max_length up to whole 77-token chunks."""
    max_length = params["cond_stage_config"]["params"].get("max_length", CLIP_POSITIONS)
    return CLIP_POSITIONS * math.ceil(max_length / CLIP_POSITIONS)


def histosynth_config(params: dict, encoder: str, vae_dir: Path) -> hs_config.HistoSynthConfig:
    """The `pathldm` preset with the unet/diffusion/text/vae fields the YAML states."""
    u = params["unet_config"]["params"]
    dd = params["first_stage_config"]["params"]["ddconfig"]
    levels = len(u["channel_mult"])
    per_head = u.get("num_head_channels", -1)
    if per_head == -1 and u["num_heads"] != 1:
        raise HistosynthError("unet_config: a fixed num_heads > 1 has no histosynth equivalent "
                              "(unet.attention_head_dim counts channels per head)")
    overrides = {
        "slides": {"size": u["image_size"] * 2 ** (len(dd["ch_mult"]) - 1)},
        "unet": {
            "block_out_channels": [u["model_channels"] * m for m in u["channel_mult"]],
            "layers_per_block": u["num_res_blocks"],
            "cross_attention_levels": [2 ** level in u["attention_resolutions"] for level in range(levels)],
            "attention_head_dim": None if per_head == -1 else per_head,
            "transformer_layers_per_block": u.get("transformer_depth", 1),
            "norm_num_groups": 32,
        },
        "diffusion": {
            "num_train_timesteps": params.get("timesteps", 1000),
            "beta_schedule": "scaled_linear",  # CompVis 'linear' = linspace of sqrt(beta), squared
            "beta_start": params.get("linear_start", 1e-4),
            "beta_end": params.get("linear_end", 2e-2),
            "prediction_type": "epsilon",
        },
        "text": {"encoder": encoder, "long_context": "chunked", "context_length": context_length(params),
                 "template": TEMPLATE, "levels": LEVELS, "attend_padding": True},
        "vae": {"pretrained": str(vae_dir), "kind": "vq", "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
                "layers_per_block": dd["num_res_blocks"], "latent_channels": dd["z_channels"],
                "num_vq_embeddings": params["first_stage_config"]["params"]["n_embed"]},
    }
    base = hs_config.load_config("pathldm").model_dump(mode="json")
    return hs_config.validate(hs_config.deep_merge(base, overrides), source="convert-pathldm")


# ---------------------------------------------------------------- state dict -> models

def split_state(state: dict) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """Group keys by model prefix (prefix removed); everything else goes to `ignored` by kind."""
    groups: dict[str, dict] = {"unet": {}, "vae": {}, "text": {}}
    ignored: dict[str, list[str]] = {}
    for key, tensor in state.items():
        if key == "scale_factor":  # LatentDiffusion's buffer (scale_by_std): read as the VQ scaling factor
            continue
        for name, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text", TEXT_PREFIX)):
            if key.startswith(prefix):
                groups[name][key[len(prefix):]] = tensor
                break
        else:
            kind = ("schedule buffers" if key in SCHEDULE_BUFFERS else
                    key.split(".")[0] if "." in key else "other")
            ignored.setdefault(kind, []).append(key)
    return groups, ignored


def rename(state: dict, new_name, what: str) -> dict:
    """Apply a key map to every key; any key it cannot place is an error naming the leftovers."""
    out, leftovers = {}, []
    for key, tensor in state.items():
        new = new_name(key)
        if new is None or new in out:
            leftovers.append(key)
        else:
            out[new] = tensor.float() if tensor.is_floating_point() else tensor  # fp16 files -> fp32 runs
    if leftovers:
        raise HistosynthError(f"{what}: {len(leftovers)} checkpoint keys match no {what} parameter: "
                              f"{', '.join(leftovers[:8])}{' ...' if len(leftovers) > 8 else ''}")
    return out


def load_strict(model, state: dict, what: str):
    """Load a state dict that must match the model's keys and shapes exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise HistosynthError(f"{what}: checkpoint does not match the config built from the YAML: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise HistosynthError(f"{what}: some tensors were not filled from the checkpoint")
    return model.eval()


def _on_meta(factory):
    """Build a model without allocating or initialising weights (they are assigned from the file)."""
    import torch

    with torch.device("meta"):
        return factory()


def convert_unet(state: dict, params: dict):
    from diffusers import UNet2DConditionModel

    cfg = unet_config(params)
    weights = rename(state, lambda k: unet_key(k, cfg["layers_per_block"]), "U-Net")
    return load_strict(_on_meta(lambda: UNet2DConditionModel(**cfg)), weights, "U-Net")


def convert_vq(state: dict, params: dict, scaling_factor: float):
    from diffusers import VQModel

    cfg = vq_config(params, scaling_factor)
    weights = rename(state, lambda k: vae_key(k, len(cfg["block_out_channels"])), "VQ first stage")
    for key in [k for k in weights if is_vae_attention_projection(k)]:
        weights[key] = weights[key][:, :, 0, 0].contiguous()  # 1x1 conv -> linear
    return load_strict(_on_meta(lambda: VQModel(**cfg)), weights, "VQ first stage")


def clip_config(state: dict):
    """CLIPTextConfig read off the weights' shapes (OpenAI CLIP conventions for what shapes don't show)."""
    from transformers import CLIPTextConfig

    vocab, width = state["embeddings.token_embedding.weight"].shape
    layers = {k.split(".")[2] for k in state if k.startswith("encoder.layers.")}
    if width % CLIP_HEAD_WIDTH:
        raise HistosynthError(f"text encoder: width {width} is not a multiple of CLIP's "
                              f"{CLIP_HEAD_WIDTH}-channel heads")
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=width // CLIP_HEAD_WIDTH,
        max_position_embeddings=state["embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def convert_clip(state: dict) -> tuple[Any, list[str]]:
    """`cond_stage_model.` keys -> a CLIPTextModel; returns it and the buffers dropped after checking."""
    import torch
    from transformers import CLIPTextModel

    inner = "transformer.text_model."  # FrozenCLIPEmbedder.transformer = CLIPTextModel (transformers 4.x)
    plain = {k[len(inner):]: v for k, v in state.items() if k.startswith(inner)}
    if "embeddings.token_embedding.weight" not in plain:
        raise HistosynthError("text encoder: no cond_stage_model.transformer.text_model.* weights "
                              "(only PathLDM's CLIP text conditioning is supported)")
    model = CLIPTextModel(clip_config(plain))
    wanted = set(model.state_dict())
    prefix = "text_model." if any(k.startswith("text_model.") for k in wanted) else ""  # transformers < 5.6
    ids = inner + "embeddings.position_ids"
    dropped = []
    if ids in state and prefix + "embeddings.position_ids" not in wanted:  # no longer saved since 5.6
        if not torch.equal(state[ids].flatten().long(), torch.arange(state[ids].numel())):
            raise HistosynthError("text encoder: position_ids are not 0..n-1; PathLDM's chunking assumes they are")
        dropped.append(TEXT_PREFIX + ids)
    kept = {k: v for k, v in state.items() if TEXT_PREFIX + k not in dropped}
    weights = rename(kept, lambda k: prefix + k[len(inner):] if k.startswith(inner) else None, "text encoder")
    return load_strict(model, weights, "text encoder"), dropped


def check_schedule(state: dict, cfg: hs_config.HistoSynthConfig) -> None:
    """The checkpoint's `betas` buffer must be the schedule the YAML (and the run) states."""
    if "betas" not in state:
        return
    import torch

    from ..schedules import betas_of

    ours, theirs = betas_of(cfg.diffusion).double(), state["betas"].double()
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-7):
        raise HistosynthError("checkpoint: its `betas` buffer differs from the YAML's schedule "
                              f"(linear {cfg.diffusion.beta_start} to {cfg.diffusion.beta_end}, "
                              f"{cfg.diffusion.num_train_timesteps} steps)")


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the run folder

def is_ldm_yaml(path: str | Path) -> bool:
    """True for a latent-diffusion config (top-level `model:` with a `target`), not a histosynth one."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and "target" in data["model"]


def sampling_overrides(cfg, config_file, overrides) -> "hs_config.HistoSynthConfig":
    """Apply --config/--set to a converted run's config; only its sampling defaults may change."""
    new = hs_config.load_config(base=cfg.model_dump(mode="json"), file=config_file, overrides=list(overrides))
    for section in type(cfg).model_fields:
        if section != "sample" and getattr(new, section) != getattr(cfg, section):
            raise hs_config.ConfigError(f"{section}: comes from the checkpoint and PathLDM's YAML; "
                              f"--config/--set may change only sample.*")
    return new


def convert_pathldm(
    ckpt: str | Path,                      # PathLDM Lightning checkpoint (.ckpt)
    yaml_path: str | Path,                 # its latent-diffusion config
    out: str | Path,                       # run folder to create
    text_encoder: str | None = None,       # hub id or folder to use instead of the checkpoint's CLIP
    trust_checkpoint: bool = False,        # allow the full unpickler for files that need it
    config_file: str | Path | None = None,  # histosynth YAML over the run's config (sample section only)
    overrides: list[str] | tuple[str, ...] = (),  # `--set sample.x=v`, likewise
) -> dict[str, Any]:
    """Write a histosynth run folder from a PathLDM checkpoint; returns what was converted and ignored."""
    ckpt, yaml_path, out = Path(ckpt), Path(yaml_path), Path(out).resolve()
    params = read_pathldm_yaml(yaml_path)
    if out.exists() and any(p != RunFolder(out).manifest_path for p in out.iterdir()):
        raise HistosynthError(f"{out}: folder exists and is not empty; choose a new --out")
    if not ckpt.is_file():
        raise HistosynthError(f"{ckpt}: checkpoint not found")
    if text_encoder and Path(text_encoder).is_dir():
        text_encoder = str(Path(text_encoder).resolve())  # the run must find it from any working directory
    layout = RunFolder(out)
    encoder = text_encoder or layout.text_encoder_dir.name  # the run's own folder, relative to the run
    cfg = histosynth_config(params, text_encoder or str(layout.text_encoder_dir), layout.vae_dir)
    if config_file is not None or overrides:
        cfg = sampling_overrides(cfg, config_file, overrides)
    with recording("convert-pathldm", out, config=cfg) as manifest:
        info(f"hashing {ckpt.name}")
        source = {"file": ckpt.name, "sha256": sha256_file(ckpt), "bytes": ckpt.stat().st_size,
                  "config": yaml_path.name, "config_sha256": sha256_file(yaml_path)}
        manifest.inputs[str(ckpt)] = "sha256:" + source["sha256"]
        manifest.add_input(yaml_path)
        manifest.results["source_checkpoint"] = source

        state = load_state_dict(ckpt, trust=trust_checkpoint)
        groups, ignored = split_state(state)
        check_schedule(state, cfg)
        scaling = float(state["scale_factor"]) if "scale_factor" in state else float(params.get("scale_factor", 1.0))
        if not groups["unet"] or not groups["vae"]:
            raise HistosynthError(f"{ckpt}: no {UNET_PREFIX}* or {VAE_PREFIX}* weights; is this a PathLDM checkpoint?")

        unet = convert_unet(groups["unet"], params)
        vae = convert_vq(groups["vae"], params, scaling)
        parameters = {"unet": count(unet), "vae": count(vae)}
        converted = {"unet": len(groups["unet"]), "vae": len(groups["vae"])}
        if "model_ema" in ignored:
            warn(f"{ckpt.name}: EMA weights (model_ema.*) are not converted; the raw U-Net weights are used")
        clip = None
        if text_encoder:
            if groups["text"]:
                warn(f"--text-encoder {text_encoder}: the checkpoint's own text encoder is not converted")
                ignored["cond_stage_model (replaced by --text-encoder)"] = [TEXT_PREFIX + k for k in groups["text"]]
        elif groups["text"]:
            clip, dropped = convert_clip(groups["text"])
            if clip.config.hidden_size != unet.config.cross_attention_dim:
                raise HistosynthError(f"text encoder width {clip.config.hidden_size} != U-Net context_dim "
                                      f"{unet.config.cross_attention_dim}")
            parameters["text_encoder"] = count(clip)
            converted["text_encoder"] = len(groups["text"]) - len(dropped)
            if dropped:
                ignored["text buffers"] = dropped
        else:
            encoder = params["cond_stage_config"]["params"].get("version", "openai/clip-vit-large-patch14")
            warn(f"{ckpt.name} holds no text encoder weights; using {encoder} named by the YAML")
            cfg.text.encoder = encoder
            manifest.config = cfg.model_dump(mode="json")

        with atomic_dir(out) as tmp:
            write_run(tmp, cfg, unet, vae, clip, encoder, source)
        manifest.results.update(
            parameters=parameters,
            converted_keys=converted,
            ignored_keys={kind: len(keys) for kind, keys in ignored.items()},
            scaling_factor=scaling,
            text_encoder=encoder,
        )
    for kind, keys in sorted(ignored.items()):
        info(f"ignored {len(keys)} keys of {kind} (e.g. {keys[0]})")
    info(f"converted {', '.join(f'{k} {v / 1e6:.1f} M' for k, v in parameters.items())} parameters into {out}")
    return manifest.results


def write_run(tmp: Path, cfg, unet, vae, clip, encoder: str, source: dict) -> None:
    """The run layout of histosynth.runfolder, as `histosynth train` leaves it, plus its model card."""
    import diffusers

    from ..modelcard import write_model_card
    from ..schedules import training_scheduler
    from .clip_tokenizer import clip_tokenizer

    run = RunFolder(tmp)
    run.write_config(cfg)
    unet.save_pretrained(run.unet_dir)
    vae.save_pretrained(run.vae_dir)
    training_scheduler(cfg.diffusion).save_pretrained(run.scheduler_dir)
    if clip is not None:
        clip.save_pretrained(run.text_encoder_dir)
        clip_tokenizer(model_max_length=clip.config.max_position_embeddings).save_pretrained(run.text_encoder_dir)
    run.write_condition(Condition(
        encoder=encoder, context_length=cfg.text.context_length, long_context="chunked", attend_padding=True,
        template=TEMPLATE, levels=tuple(LEVELS), budget=None, width=unet.config.cross_attention_dim,
    ))
    run.write_model_index(pipeline_components("VQModel"), diffusers.__version__, source_checkpoint=source)
    write_model_card(run)
