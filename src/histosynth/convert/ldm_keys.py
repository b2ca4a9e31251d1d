"""CompVis latent-diffusion parameter names -> diffusers / transformers names, one key at a time.

Renaming key by key (instead of copying whole blocks, as diffusers' single-file helpers do) lets the
converter prove that every tensor of the checkpoint went somewhere: a key no rule matches is a
leftover, and a strict load then proves nothing the target model needs is missing.
"""

from __future__ import annotations

import re

# ResBlock (openaimodel.py) sub-modules -> diffusers ResnetBlock2D.
UNET_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
UNET_TOP = {
    "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
}
# AttnBlock (model.py) -> diffusers Attention of the VAE mid block; q/k/v/proj_out are 1x1 convs there.
VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
VAE_TOP = {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}


def _split(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    """('input_blocks.0.0.weight', {...}) -> ('conv_in', 'weight') for the longest matching prefix."""
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old + "."):
            return prefixes[old], key[len(old) + 1:]
    return None


def _resnet(rest: str) -> str | None:
    hit = _split(rest, UNET_RESNET)
    return f"{hit[0]}.{hit[1]}" if hit else None


def unet_key(key: str, layers_per_block: int) -> str | None:
    """A `model.diffusion_model.` key (prefix removed) -> its UNet2DConditionModel key, or None.

    CompVis numbers blocks flat: input_blocks[1 + level * (L + 1) + j] holds res block j (and its
    SpatialTransformer as sub-module 1), the last one of a level the downsampler; output_blocks
    count L + 1 per level, the upsampler sitting after the res block (and transformer) of the last.
    """
    hit = _split(key, UNET_TOP)
    if hit:
        return f"{hit[0]}.{hit[1]}"
    per_level = layers_per_block + 1
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        index, sub, rest = int(m[1]) - 1, int(m[2]), m[3]
        level, j = divmod(index, per_level)
        if j == layers_per_block:  # Downsample: input_blocks.N.0.op
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}" if rest.startswith("op.") else None
        if sub == 0:
            new = _resnet(rest)
            return f"down_blocks.{level}.resnets.{j}.{new}" if new else None
        return f"down_blocks.{level}.attentions.{j}.{rest}" if sub == 1 else None
    m = re.fullmatch(r"middle_block\.(\d)\.(.+)", key)
    if m:
        sub, rest = int(m[1]), m[2]
        if sub == 1:
            return f"mid_block.attentions.0.{rest}"
        new = _resnet(rest)
        return f"mid_block.resnets.{sub // 2}.{new}" if new else None
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        level, j = divmod(int(m[1]), per_level)
        sub, rest = int(m[2]), m[3]
        if sub == 0:
            new = _resnet(rest)
            return f"up_blocks.{level}.resnets.{j}.{new}" if new else None
        if rest.startswith("conv."):  # Upsample: sub-module 1 without attention, 2 with it
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{j}.{rest}" if sub == 1 else None
    return None


def vae_key(key: str, num_levels: int) -> str | None:
    """A `first_stage_model.` key (prefix removed) of a CompVis VQModel -> its diffusers VQModel key.

    The decoder's `up` list is stored lowest resolution last, diffusers' `up_blocks` first.
    """
    if key == "quantize.embedding.weight" or key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return None
    part, rest = m[1], m[2]
    hit = _split(rest, VAE_TOP)
    if hit:
        return f"{part}.{hit[0]}.{hit[1]}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", rest)
    if m:
        kind, level, inner, block, tail = m[1], int(m[2]), m[3], m[4], m[5]
        if (kind == "down") != (part == "encoder"):
            return None
        name = "down_blocks" if kind == "down" else "up_blocks"
        index = level if kind == "down" else num_levels - 1 - level
        if block is not None:
            return f"{part}.{name}.{index}.resnets.{block}.{tail.replace('nin_shortcut', 'conv_shortcut')}"
        sampler = "downsamplers" if kind == "down" else "upsamplers"
        return f"{part}.{name}.{index}.{sampler}.0.{tail}" if inner == f"{kind}sample" else None
    m = re.fullmatch(r"mid\.(block_1|block_2|attn_1)\.(.+)", rest)
    if m:
        if m[1] == "attn_1":
            hit = _split(m[2], VAE_ATTN)
            return f"{part}.mid_block.attentions.0.{hit[0]}.{hit[1]}" if hit else None
        return f"{part}.mid_block.resnets.{int(m[1][-1]) - 1}.{m[2].replace('nin_shortcut', 'conv_shortcut')}"
    return None


def is_vae_attention_projection(diffusers_key: str) -> bool:
    """1x1 convs in CompVis' AttnBlock that are Linear layers in diffusers (weights lose 2 dims)."""
    return ".mid_block.attentions." in diffusers_key and diffusers_key.endswith(
        ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))
