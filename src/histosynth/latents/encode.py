"""`histosynth encode`: VAE latents of every tile, cached once under WS/latents/<vae-id>/.

Dihedral augmentation: by default it happens in latent space (rotating / mirroring the latent
grid), which costs no disk or encode time, but a convolutional VAE is only approximately
equivariant; the error against encoding the transformed tile is measured here and recorded in
info.json and the manifest (`dihedral`). With `vae.cache_dihedral` the 7 other variants are encoded
too (8x encode time and disk), and training uses them: exact, and affordable for small sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..console import HistosynthError, info, track
from ..fileio import atomic_path, write_json
from ..imageio import to_uint8, to_unit_range
from ..locks import stage_lock
from ..manifest import recording
from ..slides.dataset import dihedral
from ..status import WorkLog, inputs_hash
from .store import INFO_NAME, KEYS_METADATA, TILES_NAME, LatentsResult, model_id, shard_name, vae_id
from .vae import batches, decode, downsample_factor, encode, load_vae, vae_kind

SHARD_TILES = 4096  # tiles per shard file: a killed encode redoes at most one shard


def vae_source(ws, cfg) -> Path | str:
    """The VAE a stage uses: `vae.pretrained` when set (WS/vae/ when train-vae adopted that same
    model and gave it the data's scaling factor), else WS/vae/ (trained by train-vae)."""
    adopted = adopted_from(ws.vae_dir)
    if cfg.vae.pretrained and (adopted is None or adopted != str(cfg.vae.pretrained)):
        return cfg.vae.pretrained
    return ws.require(ws.vae_dir / "config.json", "train-vae").parent


def adopted_from(vae_dir: Path) -> str | None:
    """The `vae.pretrained` that train-vae adopted into `vae_dir` (None: trained here, or no VAE)."""
    from ..fileio import read_json

    for record, key in ((vae_dir / "metrics.json", "pretrained"), (vae_dir / "manifest.json", "results")):
        if record.exists():
            value = read_json(record).get(key)
            value = value.get("pretrained") if isinstance(value, dict) else value
            if value:
                return str(value)
    return None


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
    """Encode all tiles with `vae` (a model, a folder or hub id; default: `vae_source`), resumable
    by shard and incremental by tile key; make the cache current (result.json); returns its folder."""
    from ..slides.index import read_index
    from ..slides.keys import index_keys, keys_hash
    from ..slides.store import TileStore

    if vae is None or isinstance(vae, (str, Path)):
        source = str(vae or vae_source(ws, cfg))
        vae = load_vae(source)
        out = ws.latent_dir(vae_id(source))
    else:  # a model object: name the cache by its weights
        source = getattr(vae.config, "_name_or_path", None) or "in-memory"
        out = ws.latent_dir(model_id(vae))
    vae.eval()
    index = read_index(ws).sort_values("tile_id").reset_index(drop=True)
    if index.empty:
        raise HistosynthError(f"{ws.tile_index_path}: no tiles to encode")
    index["tile_key"] = index_keys(index)
    if index["tile_key"].duplicated().any():
        raise HistosynthError(f"{ws.tile_index_path}: duplicate tiles ({index['tile_key'][index['tile_key'].duplicated()].iloc[0]})")
    store = TileStore(ws, index)
    with stage_lock(ws.lock_path("encode"), "encode"), recording("encode", out, config=cfg) as manifest:
        manifest.add_input(ws.tile_index_path, "tiles/index.parquet")
        where = encode_missing(out, WorkLog(ws.status_path(out)), vae, store, index, cfg)
        shape = list(load_shard(out, next(iter(where.values()))[0])["latents"].shape[1:])
        ids = index["tile_id"].astype(int).tolist()
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
        write_json(out / INFO_NAME, meta)
        table = index[["tile_id", "tile_key", "case_id", "split"]].assign(
            shard=[where[k][0] for k in index["tile_key"]], row=[where[k][1] for k in index["tile_key"]])
        with atomic_path(out / TILES_NAME) as tmp:
            table.to_parquet(tmp, index=False)
        LatentsResult(vae=str(source), vae_id=out.name, path=str(out.relative_to(ws.root)), count=len(ids),
                      keys=keys_hash(index["tile_key"])).write(ws)  # last: the cache is complete and current
        manifest.results.update(meta)
    if check:
        used = "cached variants are used" if cfg.vae.cache_dihedral else "latent-space transforms are used"
        info(f"latents: {len(ids)} tiles {shape}; dihedral in latent space: relative error "
             f"{check['latent_rel_rmse']:.3f}, PSNR {check['psnr_latent_space_db']:.2f} dB vs "
             f"{check['psnr_encoded_db']:.2f} dB encoding the transformed tile ({used})")
    return out


def load_shard(out: Path, k: int) -> dict:
    from safetensors.torch import load_file

    return load_file(out / shard_name(k))


def cached_keys(out: Path, log: WorkLog, want_variants: bool) -> dict[str, tuple[int, int]]:
    """tile key -> (shard, row) of the shards the status record says are done (and still are)."""
    from safetensors import safe_open

    where = {}
    for unit in log.by_state("done"):
        path = out / unit
        if not path.exists():
            continue
        with safe_open(path, framework="pt") as f:
            keys = json.loads((f.metadata() or {}).get(KEYS_METADATA, "[]"))
        if log.done(unit, shard_inputs(keys, want_variants)):
            k = int(path.name.removeprefix("shard-").removesuffix(".safetensors"))
            where.update({key: (k, row) for row, key in enumerate(keys)})
    return where


def shard_inputs(keys: list[str], want_variants: bool) -> str:
    return inputs_hash(tile_keys=keys, variants=bool(want_variants))


def encode_missing(out: Path, log: WorkLog, vae, store, index, cfg) -> dict[str, tuple[int, int]]:
    """Encode the tiles whose keys no finished shard holds, in new shards; key -> (shard, row)."""
    from safetensors.torch import save_file

    where = cached_keys(out, log, cfg.vae.cache_dihedral)
    todo = index[~index["tile_key"].isin(where)]
    if where and len(todo):
        info(f"{out}: {len(todo)} of {len(index)} tiles have no cached latents (tiles added or re-tiled "
             f"since the last encode); encoding them")
    elif where:
        info(f"{out}: all {len(index)} tiles cached")
    first = 1 + max((k for k, _ in where.values()), default=-1)
    for k, start in enumerate(range(0, len(todo), SHARD_TILES), start=first):
        part = todo.iloc[start:start + SHARD_TILES]
        keys, ids = part["tile_key"].tolist(), part["tile_id"].astype(int).tolist()
        tensors = encode_shard(vae, store, ids, cfg, f"encode shard {k}")
        with atomic_path(out / shard_name(k)) as tmp:
            save_file(tensors, tmp, metadata={KEYS_METADATA: json.dumps(keys)})
        log.mark(shard_name(k), shard_inputs(keys, cfg.vae.cache_dihedral), "done", output={"tiles": len(keys)})
        where.update({key: (k, row) for row, key in enumerate(keys)})
    return where


@torch.no_grad()
def encode_shard(vae, store, shard_ids: list[int], cfg, label: str) -> dict:
    """`latents` [n, C, h, w] and, with vae.cache_dihedral, `variants` [n, 7, C, h, w] (k = 1..7)."""
    lat, var = [], []
    for chunk in track(list(batches(shard_ids, cfg.vae.encode_batch_size)), label):
        x = to_unit_range(store.get(chunk))
        lat.append(encode(vae, x).float())
        if cfg.vae.cache_dihedral:
            var.append(torch.stack([encode(vae, dihedral(x, k)).float() for k in range(1, 8)], dim=1))
    tensors = {"latents": torch.cat(lat).contiguous()}
    if var:
        tensors["variants"] = torch.cat(var).contiguous()
    return tensors
