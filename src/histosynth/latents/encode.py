"""`histosynth encode`: VAE latents of every tile, cached once under WS/latents/<vae-id>/.

Dihedral augmentation: by default it happens in latent space (rotating / mirroring the latent
grid), which costs no disk or encode time, but a convolutional VAE is only approximately
equivariant; the error against encoding the transformed tile is measured here and recorded in
info.json and the manifest (`dihedral`). With `vae.cache_dihedral` the 7 other variants are encoded
too (8x encode time and disk), and training uses them: exact, and affordable for small sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..console import HistosynthError, info, track
from ..fileio import atomic_path, write_json
from ..imageio import to_uint8, to_unit_range
from ..manifest import recording
from ..slides.dataset import dihedral
from .store import model_id, vae_id
from .vae import batches, decode, downsample_factor, encode, load_vae, vae_kind

SHARD_TILES = 4096  # tiles per shard file: a killed encode redoes at most one shard


def vae_source(ws, cfg) -> Path | str:
    """The VAE the workspace uses: WS/vae/ (trained or adopted by train-vae), else `vae.pretrained`."""
    if cfg.vae.pretrained and not (ws.vae_dir / "config.json").exists():
        return cfg.vae.pretrained
    return ws.require(ws.vae_dir / "config.json", "train-vae").parent


@torch.no_grad()
def dihedral_error(vae, tiles: np.ndarray) -> dict:
    """How far T(encode(x)) is from encode(T(x)), for the 7 non-identity transforms T.

    `latent_rel_rmse`: ||encode(Tx) - T encode(x)|| / ||encode(Tx)||; `psnr_latent_space_db` and
    `psnr_encoded_db`: PSNR of decode(T encode(x)) and of decode(encode(Tx)) against Tx.
    """
    from skimage.metrics import peak_signal_noise_ratio

    x = to_unit_range(tiles)
    z = encode(vae, x)
    rel, psnr_latent, psnr_encoded = [], [], []
    for k in range(1, 8):
        tx = dihedral(x, k)
        z_true, z_moved = encode(vae, tx), dihedral(z, k)
        rel.append(float((z_true - z_moved).norm() / z_true.norm()))
        truth = to_uint8(tx)
        for name, lat, out in (("latent", z_moved, psnr_latent), ("encoded", z_true, psnr_encoded)):
            recon = to_uint8(decode(vae, lat))
            out.append(np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(truth, recon)]))
    return {
        "mode": "latent-space",
        "n_tiles": len(tiles),
        "latent_rel_rmse": float(np.mean(rel)),
        "latent_rel_rmse_per_k": [round(r, 5) for r in rel],
        "psnr_latent_space_db": float(np.mean(psnr_latent)),
        "psnr_encoded_db": float(np.mean(psnr_encoded)),
    }


def encode_workspace(ws, cfg, vae=None) -> Path:
    """Encode all tiles (resumable by shard) with `vae` (a model, a folder or hub id; default: the
    workspace's, see `vae_source`); returns the latent folder."""
    from safetensors.torch import load_file, save_file

    if vae is None or isinstance(vae, (str, Path)):
        source = vae or vae_source(ws, cfg)
        vae = load_vae(source)
    else:  # a model object: name the cache by its weights
        source = getattr(vae.config, "_name_or_path", None) or "in-memory"
    vae.eval()
    out = ws.latent_dir(vae_id(source) if source != "in-memory" else model_id(vae))
    from ..slides.index import read_index
    from ..slides.store import TileStore

    index = read_index(ws).sort_values("tile_id").reset_index(drop=True)
    if index.empty:
        raise HistosynthError(f"{ws.tile_index_path}: no tiles to encode")
    ids = index["tile_id"].astype(int).tolist()
    store = TileStore(ws)
    with distributed.on_main(recording, "encode", out, config=cfg) as manifest:  # rank 0 records
        manifest.add_input(ws.tile_index_path, "tiles/index.parquet")
        shard_of, row_of = [], []
        plan = list(batches(ids, SHARD_TILES))
        for k, shard_ids in enumerate(plan):
            path = out / f"shard-{k}.safetensors"
            if path.exists() and shard_is_current(load_file(path), shard_ids, cfg.vae.cache_dihedral):
                info(f"{path.name}: cached")
            elif (tensors := encode_shard(vae, store, shard_ids, cfg, f"encode shard {k}")) is not None:
                with atomic_path(path) as tmp:  # rank 0 writes the shard merged from every rank's batches
                    save_file(tensors, tmp)
            shard_of += [k] * len(shard_ids)
            row_of += list(range(len(shard_ids)))
        if not distributed.is_main():  # other ranks: done once rank 0 has written the index
            distributed.barrier()
            return out
        shape = list(load_file(out / "shard-0.safetensors")["latents"].shape[1:])
        train_ids = index.loc[index["split"] == "train", "tile_id"].astype(int).tolist() or ids
        check = dihedral_error(vae, store.get(train_ids[: cfg.vae.dihedral_check_tiles])) \
            if cfg.vae.dihedral_check_tiles else None
        meta = {
            "vae": str(source), "vae_id": out.name, "kind": vae_kind(vae),
            "scaling_factor": float(vae.config.scaling_factor), "downsample_factor": downsample_factor(vae),
            "shape": shape, "count": len(ids), "dtype": "float32",
            "latents": "posterior mean" if vae_kind(vae) == "kl" else "pre-quantisation",
            "dihedral": {**(check or {}), "mode": "cached-variants" if cfg.vae.cache_dihedral else "latent-space"},
        }
        write_json(out / "info.json", meta)
        table = index[["tile_id", "case_id", "split"]].assign(shard=shard_of, row=row_of)
        with atomic_path(out / "tiles.parquet") as tmp:  # written last: its presence means complete
            table.to_parquet(tmp, index=False)
        manifest.results.update(meta)
    distributed.barrier()
    if check:
        used = "cached variants are used" if cfg.vae.cache_dihedral else "latent-space transforms are used"
        info(f"latents: {len(ids)} tiles {shape}; dihedral in latent space: relative error "
             f"{check['latent_rel_rmse']:.3f}, PSNR {check['psnr_latent_space_db']:.2f} dB vs "
             f"{check['psnr_encoded_db']:.2f} dB encoding the transformed tile ({used})")
    return out


def shard_is_current(shard: dict, shard_ids: list[int], want_variants: bool) -> bool:
    return shard["tile_id"].tolist() == shard_ids and (not want_variants or "variants" in shard)


@torch.no_grad()
def encode_shard(vae, store, shard_ids: list[int], cfg, label: str) -> dict:
    """`latents` [n, C, h, w] and, with vae.cache_dihedral, `variants` [n, 7, C, h, w] (k = 1..7).

    Under a launcher each rank encodes its share of the batches and rank 0 gets the merged shard
    (histosynth.distributed); the other ranks get None."""
    chunks, done = list(batches(shard_ids, cfg.vae.encode_batch_size)), []
    for i, chunk in track(distributed.my_share(chunks), label):  # this rank's whole batches
        x = to_unit_range(store.get(chunk))
        variants = torch.stack([encode(vae, dihedral(x, k)).float() for k in range(1, 8)], dim=1) \
            if cfg.vae.cache_dihedral else None
        done.append((i, (encode(vae, x).float(), variants)))
    parts = distributed.gather_ordered(done, len(chunks))  # None on ranks other than 0
    if parts is None:
        return None
    lat, var = [p[0] for p in parts], [p[1] for p in parts if p[1] is not None]
    tensors = {"latents": torch.cat(lat).contiguous(), "tile_id": torch.tensor(shard_ids)}
    if var:
        tensors["variants"] = torch.cat(var).contiguous()
    return tensors
