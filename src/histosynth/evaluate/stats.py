"""Per-set statistics (Inception features, stain descriptors, thumbnails), saved to and reused from `.npz`.

One pass over a set computes every part a metric needs. A real set's file is reused while its
inputs, size, crop and Inception weights are the same: the cache folder's status record
(histosynth.status, `status.json`, one unit per file) says so, with the file's parts, weights and
mpp as its output; a cache of an older histosynth (no record) is judged once by the file's own
`meta` and then recorded. pytorch-fid's own `--save-stats` files (`mu`, `sigma`) load too, for FID only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..console import HistosynthError, info, track
from ..fileio import atomic_path
from ..status import STATUS_FILE, WorkLog, inputs_hash
from .inception import PoolFeatures
from .c2st import small_images
from .memorization import thumbnails
from .metrics import gaussian_stats
from .sources import ImageSet, Source
from .stain import describe

VERSION = "histosynth-eval-1"   # bump when a part is computed differently
PREVIEW = 16                    # images kept for the report's grids
PARTS = ("inception", "stain", "thumbs", "small", "descriptors")


@torch.no_grad()
def compute_stats(images: ImageSet, parts: set[str], inception: PoolFeatures | None = None,
                  batch_size: int = 32, seed: int = 0, encoders: dict | None = None,
                  mpp: float | None = None) -> dict[str, np.ndarray]:
    if "inception" in parts and inception is None:
        raise ValueError("inception features asked for without an Inception network")
    device = next(inception.parameters()).device if inception is not None else "cpu"
    rng = np.random.default_rng(seed)
    feats, hed_stats, hed_pixels, thumbs, preview, small, desc = [], [], [], [], [], [], []
    encoded: dict[str, list[np.ndarray]] = {name: [] for name in encoders or {}}
    batches = images.batches(batch_size)
    for batch in track(batches, f"features of {images.source}", total=-(-len(images) // batch_size)):
        if "inception" in parts:  # pytorch-fid's input: ToTensor, i.e. uint8 / 255 in [0, 1]
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255).to(device)
            feats.append(inception(x).cpu().numpy())
        for name, encoder in (encoders or {}).items():
            encoded[name].append(encoder(batch))
        if "stain" in parts:
            s, p = describe(batch, rng)
            hed_stats.append(s)
            hed_pixels.append(p)
        if "thumbs" in parts:
            thumbs.append(thumbnails(batch))
        if "small" in parts:
            small.append(small_images(batch))
        if "descriptors" in parts:  # the patch descriptors of histosynth.slides, in their units
            from ..slides.descriptors import describe as describe_patches

            desc.append(describe_patches(batch, mpp))
        if len(preview) < PREVIEW:
            preview.extend(batch[:PREVIEW - len(preview)])
    stats = {"ids": np.asarray(images.ids), "preview": np.stack(preview)}
    if feats:
        stats["inception"] = np.concatenate(feats).astype(np.float32)
        stats["mu"], stats["sigma"] = gaussian_stats(stats["inception"])
    for name, chunks in encoded.items():
        stats[f"feat_{name}"] = np.concatenate(chunks).astype(np.float32)
    if hed_stats:
        stats["hed_stats"], stats["hed_pixels"] = np.concatenate(hed_stats), np.concatenate(hed_pixels)
    if thumbs:
        stats["thumbs"] = np.concatenate(thumbs)
    if small:
        stats["small"] = np.concatenate(small)
    if desc:
        stats["descriptors"] = np.concatenate([d.to_numpy(dtype=np.float64) for d in desc])
        stats["descriptor_names"] = np.asarray(list(desc[0].columns))
    if images.labels is not None:
        stats["labels"] = np.asarray(images.labels)
    return stats


def save_stats(path: str | Path, stats: dict[str, np.ndarray], meta: dict) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, meta=np.asarray(json.dumps(meta)), **stats)


def load_stats(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = {k: f[k] for k in f.files if k != "meta"}
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {"source": str(path), "format": "pytorch-fid"}
    except (OSError, ValueError) as exc:
        raise HistosynthError(f"{path}: not a readable .npz statistics file ({exc.__class__.__name__})") from None
    if not {"mu", "thumbs", "hed_stats", "small", "descriptors"} & set(stats) and not any(k.startswith("feat_") for k in stats):
        raise HistosynthError(f"{path}: holds no statistics (expected mu/sigma or histosynth parts)")
    return stats, meta


def set_stats(source: Source, parts: set[str], *, n: int | None, crop: int | None, batch_size: int,
              inception: PoolFeatures | None, inception_sha256: str | None,
              cache: Path | None = None, encoders: dict | None = None, mpp: float | None = None,
              seed: int = 0, resize_to: tuple[int, int, str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Statistics of a set: loaded from an .npz source, reused from `cache`, or computed (then cached)."""
    if source.kind == "npz":
        stats, meta = load_stats(source.path)
        return stats, {**meta, "stats_file": str(source.path), "reused": True}
    images = ImageSet(source, n=n, crop=crop, seed=seed, resize_to=resize_to)
    key = {"source": str(source), "fingerprint": images.fingerprint(), "n": len(images), "crop": crop,
           "version": VERSION, "mpp": mpp if "descriptors" in parts else None, "seed": seed,
           "resize_to": list(resize_to) if resize_to else None}
    want = {"parts": sorted(parts), "mpp": key["mpp"],
            "inception_sha256": inception_sha256 if "inception" in parts else None,
            "encoders": {n: e.info["weights_sha256"] for n, e in (encoders or {}).items()}}
    log = WorkLog(cache.parent / STATUS_FILE) if cache is not None else None
    key_inputs = inputs_hash(**{k: v for k, v in key.items() if k != "mpp"})  # mpp: only with descriptors
    if cache is not None and cache.exists():
        record = log.get(cache.name)
        if record is None:  # a cache of an older histosynth: its own meta decides once, then the record
            stats, meta = load_stats(cache)
            old_key = meta.get("key") or {}
            if covers(cached_parts(meta, old_key), want):
                log.mark(cache.name, inputs_hash(**{k: v for k, v in old_key.items() if k != "mpp"}), "done",
                         output=cached_parts(meta, old_key))
        if log.done(cache.name, key_inputs) and covers(log.get(cache.name).output, want):
            stats, meta = load_stats(cache) if record is not None else (stats, meta)
            return stats, {**meta, "stats_file": str(cache), "reused": True}
        if log.changed(cache.name, key_inputs):
            info(f"{cache}: its set, count, crop, seed or resizing changed since it was cached; computing it again")
    stats = compute_stats(images, parts, inception, batch_size, encoders=encoders, mpp=mpp)
    meta = {"key": key, "source": str(source), "n": len(images), "crop": crop, "parts": sorted(parts),
            "inception_sha256": want["inception_sha256"], "encoders": want["encoders"]}
    if cache is not None:
        save_stats(cache, stats, meta)
        log.mark(cache.name, key_inputs, "done", output=want)
    return stats, {**meta, "stats_file": str(cache) if cache else None, "reused": False}


def cached_parts(meta: dict, key: dict) -> dict:
    """What a cached file holds, as its status unit records it (from an older file's own meta)."""
    return {"parts": sorted(meta.get("parts", ())), "mpp": key.get("mpp"),
            "inception_sha256": meta.get("inception_sha256"), "encoders": meta.get("encoders", {})}


def covers(have: dict, want: dict) -> bool:
    """A cached file serves a request: every part asked for, made with the same Inception and
    encoder weights, and (only when descriptors are asked for) at the same mpp."""
    parts = set(want["parts"])
    same_inception = "inception" not in parts or have.get("inception_sha256") == want["inception_sha256"]
    same_encoders = all(have.get("encoders", {}).get(n) == sha for n, sha in want["encoders"].items())
    same_mpp = "descriptors" not in parts or have.get("mpp") == want["mpp"]
    return parts <= set(have.get("parts", ())) and same_inception and same_encoders and same_mpp
