"""The first stage: load any diffusers AutoencoderKL / VQModel, or train a small AutoencoderKL here.

Latents are the KL posterior mean (or the VQ encoder's pre-quantisation output, as CompVis'
latent diffusion used); `scaling_factor` = 1 / std of the training tiles' latents, computed from
the data and stored in the model's config.json, so diffusion sees unit-variance latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..console import HistosynthError, info, track
from ..fileio import atomic_dir, write_json
from ..imageio import to_unit_range
from ..manifest import recording
from ..slides.dataset import dihedral


def vae_kind(vae) -> str:
    return "vq" if vae.__class__.__name__ == "VQModel" else "kl"


def downsample_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_vae(vae_cfg, sample_size: int):
    """A randomly initialised diffusers AutoencoderKL or VQModel from the `vae` config section."""
    from diffusers import AutoencoderKL, VQModel

    levels = len(vae_cfg.block_out_channels)
    common = dict(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vae_cfg.block_out_channels),
        layers_per_block=vae_cfg.layers_per_block,
        latent_channels=vae_cfg.latent_channels,
        norm_num_groups=min(32, vae_cfg.block_out_channels[0]),
        sample_size=sample_size,
    )
    if vae_cfg.kind == "vq":
        return VQModel(**common, num_vq_embeddings=vae_cfg.num_vq_embeddings)
    return AutoencoderKL(**common)


def load_vae(name_or_path: str | Path):
    """An AutoencoderKL or VQModel from a diffusers folder (or a pipeline folder's vae/), or a hub id."""
    from diffusers import AutoencoderKL, VQModel

    classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
            path = path / "vae"
        config = path / "config.json"
        if not config.exists():
            raise HistosynthError(f"{path}: not a diffusers VAE folder (no config.json)")
        name = json.loads(config.read_text()).get("_class_name")
        if name not in classes:
            raise HistosynthError(f"{config}: _class_name {name!r} is not AutoencoderKL or VQModel")
        return classes[name].from_pretrained(path)
    errors = []
    for cls in classes.values():  # a hub id: a VAE repo, or a pipeline repo with a vae/ subfolder
        for subfolder in (None, "vae"):
            try:
                return cls.from_pretrained(str(name_or_path), subfolder=subfolder)
            except (OSError, ValueError, EnvironmentError) as exc:
                errors.append(exc)
    raise HistosynthError(f"{name_or_path}: cannot load a VAE from this folder or hub id ({errors[-1].__class__.__name__})")


def encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> raw (unscaled) latents."""
    if vae_kind(vae) == "vq":
        return vae.encode(images).latents
    return vae.encode(images).latent_dist.mean


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw (unscaled) latents -> images in [-1, 1]."""
    return vae.decode(latents).sample.clamp(-1, 1)


def tile_ids_of(ws, split: str) -> list[int]:
    from ..slides.index import read_index

    index = read_index(ws)
    return index.loc[index["split"] == split, "tile_id"].astype(int).tolist()


def batches(ids: list[int], size: int):
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


@torch.no_grad()
def latent_std(vae, store, tile_ids: list[int], batch_size: int = 32) -> float:
    zs = [encode(vae, to_unit_range(store.get(chunk))) for chunk in batches(tile_ids, batch_size)]
    return float(torch.cat(zs).float().std())


@torch.no_grad()
def reconstruction_metrics(vae, store, tile_ids: list[int], batch_size: int = 32) -> dict:
    """Mean PSNR (dB) and SSIM of decode(encode(tile)) against the tile, on uint8 pixels."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from ..imageio import to_uint8

    psnr, ssim = [], []
    for chunk in batches(tile_ids, batch_size):
        tiles = store.get(chunk)
        recon = to_uint8(decode(vae, encode(vae, to_unit_range(tiles))))
        for a, b in zip(tiles, recon):
            psnr.append(peak_signal_noise_ratio(a, b, data_range=255))
            ssim.append(structural_similarity(a, b, channel_axis=-1, data_range=255))
    return {"psnr_db": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "n_tiles": len(tile_ids)}


def kl_loss(posterior) -> torch.Tensor:
    return posterior.kl().mean()


def fit_autoencoder(vae, store, train_ids: list[int], vae_cfg) -> list[float]:
    """Reconstruction (L1) + kl_weight * KL, dihedral augmentation; returns the loss per step."""
    gen = torch.Generator().manual_seed(vae_cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=vae_cfg.lr, weight_decay=0.0)
    ids = torch.tensor(train_ids)
    losses = []
    vae.train()
    for _ in track(range(vae_cfg.steps), "train VAE"):
        pick = ids[torch.randint(len(ids), (vae_cfg.batch_size,), generator=gen)]
        x = dihedral(to_unit_range(store.get(pick.tolist())), int(torch.randint(8, (1,), generator=gen)))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = (recon - x).abs().mean() + vae_cfg.kl_weight * kl_loss(posterior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.eval()
    return losses


def train_vae(ws, cfg) -> Path:
    """Train (or adopt `vae.pretrained`), set the data's scaling factor, save to WS/vae/. Returns the folder."""
    from ..slides.store import TileStore

    vae_cfg = cfg.vae
    store = TileStore(ws)
    train_ids, test_ids = tile_ids_of(ws, "train"), tile_ids_of(ws, "test")
    if not train_ids:
        raise HistosynthError(f"{ws.tile_index_path}: no training tiles")
    torch.manual_seed(vae_cfg.seed)
    with recording("train-vae", ws.vae_dir, config=cfg, seeds={"vae": vae_cfg.seed}) as manifest:
        manifest.add_input(ws.tile_index_path, "tiles/index.parquet")
        if vae_cfg.pretrained:
            vae, losses = load_vae(vae_cfg.pretrained), []
            manifest.results["pretrained"] = vae_cfg.pretrained
        else:
            if vae_cfg.kind != "kl":
                raise ConfigError("vae.kind: only an AutoencoderKL is trained here; load a VQModel with vae.pretrained")
            size = int(store.get(train_ids[:1]).shape[1])
            vae = build_vae(vae_cfg, sample_size=size)
            losses = fit_autoencoder(vae, store, train_ids, vae_cfg)
        vae.eval()
        scale_ids = train_ids[: vae_cfg.scale_tiles]
        scaling = 1.0 / latent_std(vae, store, scale_ids)
        vae.register_to_config(scaling_factor=scaling)
        metrics = reconstruction_metrics(vae, store, (test_ids or train_ids)[: vae_cfg.eval_tiles])
        metrics["split"] = "test" if test_ids else "train"
        info(f"VAE: PSNR {metrics['psnr_db']:.2f} dB, SSIM {metrics['ssim']:.3f} on {metrics['n_tiles']} "
             f"{metrics['split']} tiles; scaling_factor {scaling:.4f}")
        with atomic_dir(ws.vae_dir) as tmp:  # manifest.json is written into it after this block
            vae.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / "metrics.json", metrics | {"scaling_factor": scaling})
        manifest.results.update(
            metrics=metrics, scaling_factor=scaling, scale_tiles=len(scale_ids),
            downsample_factor=downsample_factor(vae), kind=vae_kind(vae),
            parameters=sum(p.numel() for p in vae.parameters()),
            final_loss=losses[-1] if losses else None,
            loss_first_last_10=[float(np.mean(losses[:10])), float(np.mean(losses[-10:]))] if losses else None,
        )
    return ws.vae_dir

