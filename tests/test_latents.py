"""Latents stage: VAE loading (KL / VQ, f=4 / f=8), training with a data-derived scaling factor,
the latent cache and its latent-space dihedral error. Tiles come from the real CMU-1 slide."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from histosynth.config import load_config
from histosynth.workspace import Workspace

TILE = 64
CASES = ("TCGA-A1-0001", "TCGA-A1-0002", "TCGA-A1-0003")  # the last one is the test case


def write_tiles(root, slide_path, n_tiles: int = 48, size: int = TILE) -> None:
    """Tissue tiles of a real slide in the tiles contract (HDF5 `imgs` + index.parquet), 3 cases."""
    import h5py
    import openslide
    import pandas as pd

    slide = openslide.OpenSlide(str(slide_path))
    w, h = slide.dimensions
    region = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    imgs, coords = [], []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            tile = region[y:y + size, x:x + size]
            saturation = tile.max(-1).astype(int) - tile.min(-1)
            if (saturation > 20).mean() > 0.5:
                imgs.append(tile)
                coords.append((x, y))
    step = max(1, len(imgs) // n_tiles)  # spread over the slide, not one corner
    imgs, coords = np.stack(imgs[::step][:n_tiles]), np.array(coords[::step][:n_tiles])
    (root / "tiles" / "slides").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "tiles" / "slides" / "CMU-1.h5", "w") as f:
        f["imgs"], f["coords"] = imgs, coords
    case = [CASES[i % 3] for i in range(len(imgs))]
    pd.DataFrame({
        "tile_id": np.arange(len(imgs), dtype=np.int64), "slide_id": "CMU-1", "case_id": case,
        "split": ["test" if c == CASES[-1] else "train" for c in case], "x": coords[:, 0], "y": coords[:, 1],
        "size": size, "mpp": 0.499, "file": "tiles/slides/CMU-1.h5", "row": np.arange(len(imgs)),
    }).to_parquet(root / "tiles" / "index.parquet", index=False)


def write_embeddings(root, budget: int = 35, width: int = 384, context: int = 16, seed: int = 0) -> None:
    """Per-case text embeddings in the embeddings contract (random vectors, padded masks), made
    from the workspace's current tile index and summaries (so training takes them as current)."""
    import pandas as pd
    from safetensors.torch import save_file

    from histosynth.slides.keys import index_keys
    from histosynth.text.store import embedding_inputs

    ws = Workspace(root)
    ws.summaries_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"case_id": list(CASES), "summary": [f"summary of {c}" for c in CASES]}
                 ).to_parquet(ws.summaries_path(budget), index=False)

    folder = root / "embeddings" / f"budget-{budget}-minilm-L{context}"
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(CASES), context, width, generator=gen)
    mask = torch.ones(len(CASES), context, dtype=torch.long)
    mask[:, context - 4:] = 0
    save_file({"hidden": hidden, "mask": mask, "pooled": hidden.mean(1)}, folder / "shard-0.safetensors")
    save_file({"hidden": torch.zeros(1, context, width), "mask": torch.ones(1, context, dtype=torch.long)},
              folder / "uncond.safetensors")
    hashes = [f"h{i}" for i in range(len(CASES))]
    pd.DataFrame({"text_hash": hashes, "text": list(CASES), "n_tokens": 10, "shard": 0,
                  "row": range(len(CASES))}).to_parquet(folder / "texts.parquet", index=False)
    index = pd.read_parquet(root / "tiles" / "index.parquet")
    pd.DataFrame({"tile_id": index["tile_id"], "tile_key": index_keys(index), "case_id": index["case_id"],
                  "split": index["split"], "text_hash": [hashes[CASES.index(c)] for c in index["case_id"]]}
                 ).to_parquet(folder / "tiles.parquet", index=False)
    (folder / "info.json").write_text(json.dumps({
        "encoder": "minilm", "width": width, "context_length": context, "attend_padding": False,
        "template": "{summary}", "levels": ["low", "high"], "budget": budget, "tokenizer": "minilm",
        "long_context": "chunked", "inputs": embedding_inputs(ws, budget), "complete": True}))


TINY = ["vae.steps=15", "vae.batch_size=4", "vae.scale_tiles=32", "vae.eval_tiles=8", "vae.dihedral_check_tiles=4",
        "vae.cache_dihedral=false"]


@pytest.fixture(scope="session")
def tiles_template(tmp_path_factory):
    from conftest import shared_file

    root = tmp_path_factory.mktemp("tiles-ws")
    write_tiles(root, shared_file("slides/CMU-1-Small-Region.svs"))
    write_embeddings(root)
    return root


@pytest.fixture
def tile_ws(tiles_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(tiles_template, root)
    return Workspace(root)


@pytest.mark.unit
def test_load_vae_kl_and_vq_at_f4_and_f8(tmp_path):
    from histosynth.latents.vae import build_vae, decode, downsample_factor, encode, load_vae

    for kind, channels in (("kl", [16, 16, 16]), ("kl", [16, 16, 16, 16]), ("vq", [16, 16, 16])):
        cfg = load_config("tiny-cpu", overrides=[f"vae.kind={kind}", f"vae.block_out_channels={channels}",
                                                 "vae.num_vq_embeddings=32", "vae.latent_channels=3"]).vae
        folder = tmp_path / f"{kind}-{len(channels)}"
        build_vae(cfg, sample_size=32).save_pretrained(folder)
        vae = load_vae(folder)
        f = downsample_factor(vae)
        assert f == 2 ** (len(channels) - 1) and type(vae).__name__ == {"kl": "AutoencoderKL", "vq": "VQModel"}[kind]
        with torch.no_grad():
            z = encode(vae, torch.zeros(1, 3, 32, 32))
            assert z.shape == (1, 3, 32 // f, 32 // f)
            assert decode(vae, z).shape == (1, 3, 32, 32)
    pipeline = tmp_path / "pipeline"
    shutil.copytree(tmp_path / "kl-3", pipeline / "vae")  # a pipeline folder: its vae/ is found
    assert type(load_vae(pipeline)).__name__ == "AutoencoderKL"


def test_train_vae_stores_data_scaling_and_metrics(tile_ws):
    from histosynth.latents.vae import load_vae, train_vae

    cfg = load_config("tiny-cpu", overrides=TINY)
    folder = train_vae(tile_ws, cfg)
    manifest = json.loads((folder / "manifest.json").read_text())["results"]
    vae = load_vae(folder)
    assert vae.config.scaling_factor == pytest.approx(manifest["scaling_factor"])
    assert vae.config.scaling_factor != pytest.approx(0.18215)  # computed, not the SD default
    assert manifest["metrics"]["split"] == "test" and manifest["metrics"]["n_tiles"] == 8
    assert 5 < manifest["metrics"]["psnr_db"] < 60
    first, last = manifest["loss_first_last_10"]
    assert last < first  # the reconstruction loss falls within a few steps


def test_encode_caches_latents_once_with_dihedral_error(tile_ws, monkeypatch):
    from histosynth.latents import encode as encode_mod
    from histosynth.latents.store import LatentStore
    from histosynth.latents.vae import build_vae
    from histosynth.slides.dataset import dihedral

    cfg = load_config("tiny-cpu", overrides=TINY)
    vae = build_vae(cfg.vae, sample_size=TILE)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tile_ws.vae_dir)
    out = encode_mod.encode_workspace(tile_ws, cfg)
    store = LatentStore(out)
    assert store.latents.shape == (48, 4, 16, 16) and store.scaling_factor == 0.5
    assert set(store.keys("test")).isdisjoint(store.keys("train"))
    err = store.info["dihedral"]
    assert err["mode"] == "latent-space" and 0 <= err["latent_rel_rmse"] < 2 and len(err["latent_rel_rmse_per_k"]) == 7
    # the latents are the encoder's: the cache equals a fresh encoding of the same tiles
    from histosynth.imageio import to_unit_range
    from histosynth.slides.store import TileStore

    with torch.no_grad():
        fresh = vae.encode(to_unit_range(TileStore(tile_ws).get([3, 5]))).latent_dist.mean
    keys = store.index.set_index("tile_id").loc[[3, 5], "tile_key"].tolist()
    assert torch.allclose(store.for_keys(keys), fresh, atol=1e-5)
    assert torch.equal(dihedral(dihedral(fresh, 1), 3), fresh) and torch.equal(dihedral(dihedral(fresh, 5), 5), fresh)
    # cached once: a second run encodes nothing
    monkeypatch.setattr(encode_mod, "encode", lambda *a, **k: pytest.fail("re-encoded a cached shard"))
    monkeypatch.setattr(cfg.vae, "dihedral_check_tiles", 0)
    assert encode_mod.encode_workspace(tile_ws, cfg) == out


def test_cached_dihedral_variants_are_exact_encodings_and_feed_training(tile_ws):
    from histosynth.imageio import to_unit_range
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.store import LatentStore
    from histosynth.latents.vae import build_vae
    from histosynth.slides.dataset import dihedral
    from histosynth.slides.store import TileStore
    from histosynth.train.data import TrainData

    cfg = load_config("tiny-cpu", overrides=TINY + ["vae.cache_dihedral=true"])
    vae = build_vae(cfg.vae, sample_size=TILE)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tile_ws.vae_dir)
    store = LatentStore(encode_workspace(tile_ws, cfg))
    assert store.info["dihedral"]["mode"] == "cached-variants"
    tiles = to_unit_range(TileStore(tile_ws).get([3]))
    with torch.no_grad():
        want = torch.cat([vae.encode(dihedral(tiles, k)).latent_dist.mean for k in range(8)])
    key3 = store.index.set_index("tile_id").loc[3, "tile_key"]
    variants = store.all_variants([key3])[0]
    assert torch.allclose(variants, want, atol=1e-5)
    assert not torch.allclose(variants[1], dihedral(variants[0], 1), atol=1e-3)  # not the moved grid
    data = TrainData(tile_ws, cfg, budget=35)
    row = data.train_ids.index(3) if 3 in data.train_ids else 0
    assert torch.equal(data.variant(row, 5), store.all_variants([data.train_keys[row]])[0, 5] * 0.5)


def test_adopted_pretrained_vae_gets_the_data_scaling_factor(tile_ws, tmp_path):
    from histosynth.latents.vae import build_vae, load_vae, train_vae

    cfg = load_config("tiny-cpu", overrides=TINY + ["vae.block_out_channels=[16,16,16,16]"])  # f = 8
    build_vae(cfg.vae, sample_size=TILE).save_pretrained(tmp_path / "hub-like")
    cfg = load_config("tiny-cpu", overrides=TINY + [f"vae.pretrained={tmp_path / 'hub-like'}"])
    vae = load_vae(train_vae(tile_ws, cfg))
    results = json.loads((tile_ws.vae_dir / "manifest.json").read_text())["results"]
    assert results["downsample_factor"] == 8 and results["final_loss"] is None  # adopted, not trained
    assert vae.config.scaling_factor == pytest.approx(results["scaling_factor"]) and vae.config.scaling_factor != 0.18215


def test_train_re_encodes_when_the_vae_changed_after_encode(tile_ws, capsys):
    """Latents of an older WS/vae/ are stale once train-vae wrote another: training re-encodes them."""
    from histosynth.latents.encode import encode_workspace
    from histosynth.latents.store import LatentsResult, vae_id
    from histosynth.latents.vae import build_vae
    from histosynth.train.data import TrainData

    cfg = load_config("tiny-cpu", overrides=TINY)
    for seed in (0, 1):
        torch.manual_seed(seed)
        vae = build_vae(cfg.vae, sample_size=TILE)
        vae.register_to_config(scaling_factor=0.5)
        vae.save_pretrained(tile_ws.vae_dir)
        if seed == 0:
            encode_workspace(tile_ws, cfg)
    old = LatentsResult.read(tile_ws).vae_id
    capsys.readouterr()
    data = TrainData(tile_ws, cfg, budget=35)
    assert "changed since `histosynth encode`" in capsys.readouterr().err
    assert data.latents_result.vae_id == vae_id(tile_ws.vae_dir) != old
    with torch.no_grad():
        from histosynth.imageio import to_unit_range
        from histosynth.slides.store import TileStore

        fresh = vae.encode(to_unit_range(TileStore(tile_ws).get(data.train_ids[:4]))).latent_dist.mean
    assert torch.allclose(data.latents[:4], fresh * 0.5, atol=1e-5)
