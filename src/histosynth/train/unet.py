"""The denoiser: a diffusers UNet2DConditionModel that cross-attends to the text tokens."""

from __future__ import annotations


def attention_heads(unet_cfg) -> tuple[int, ...]:
    """Heads per level. diffusers' `attention_head_dim` argument is, despite its name, the NUMBER
    of heads (diffusers issue 2011; `num_attention_heads` raises in 0.42), so channels per head
    are converted to head counts here; None = one head per block, as PathLDM."""
    if unet_cfg.attention_head_dim is None:
        return (1,) * len(unet_cfg.block_out_channels)
    return tuple(max(1, ch // unet_cfg.attention_head_dim) for ch in unet_cfg.block_out_channels)


def build_unet(cfg, cross_attention_dim: int, latent_channels: int = 4, sample_size: int = 32):
    """A randomly initialised U-Net from the `unet` section; cross_attention_dim = text width."""
    from diffusers import UNet2DConditionModel

    u = cfg.unet if hasattr(cfg, "unet") else cfg
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.cross_attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.cross_attention_levels))
    if len(u.cross_attention_levels) != len(u.block_out_channels):
        from ..config import ConfigError

        raise ConfigError("unet.cross_attention_levels: needs one entry per unet.block_out_channels level")
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_heads(u),
        transformer_layers_per_block=u.transformer_layers_per_block,
        norm_num_groups=u.norm_num_groups,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
