"""`histosynth evaluate`: real vs generated images, with the protocol written down next to the numbers.

FID/KID/precision-recall use the standard FID Inception (local weights file, checked by sha256);
the stain distance and the memorization check need no weights and are always available.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..console import HistosynthError, info, warn
from ..fileio import write_json
from ..manifest import package_versions, recording
from ..workspace import Workspace
from . import memorization as memo
from .features import load_encoder, parse_features
from .inception import RESIZE, InceptionWeightsMissing, load_inception
from .metrics import frechet_distance, frechet_distance_low_rank, gaussian_stats, kid, precision_recall
from .report import PAIRS, write_grids, write_markdown
from .sources import ImageSet, Source, parse_source, sample_protocol
from .stain import stain_distance
from .stats import set_stats
from .weightfree import IMPLEMENTATIONS as WEIGHT_FREE_IMPLEMENTATIONS, WEIGHT_FREE, descriptors_available, read_requests, weight_free

METRICS = ("fid", "kid", "pr", "fd", "stain", "memorization", "fidelity", "descriptors", "c2st", "classes")
INCEPTION_METRICS = {"fid", "kid", "pr"}
PR_K = 3
COVARIANCE = ("sample covariance (np.cov, ddof 1), no regularisation: with n <= d it is singular (rank n-1) and "
              "tr sqrt(S1 S2) is taken exactly from the eigenvalues of sqrt(S1) S2 sqrt(S1) (negatives clipped to 0; "
              "the n x n form when n_fake < d), so the distance is finite but biased upward at small n: "
              "compare only at equal n")
IMPLEMENTATIONS = {
    "fid": "Frechet distance of pool3 Gaussians (np.cov); equals pytorch_fid.fid_score.calculate_frechet_distance "
           "to 1e-6 (eigenvalue form of tr sqrt(S1 S2), low-rank when n_fake < 2048)",
    "kid": "unbiased MMD^2, cubic polynomial kernel k(x,y)=(x.y/d+1)^3, 100 subsets of min(1000, n_real, n_fake)",
    "pr": f"improved precision/recall, k-NN manifolds with k={PR_K} (Kynkaanniemi et al. 2019) on pool3 features",
    "fd": "FD_<name>/KID_<name>: the FID and KID formulas on the embeddings of each --features encoder "
          "(its own preprocessing; see protocol.encoders)",
    "stain": "skimage.color.rgb2hed (Ruifrok-Johnston); per-channel W1 of pooled pixels, "
             "Frechet distance of per-image HED mean/std",
    "memorization": f"nearest training tile by {memo.THUMB}px thumbnail RMS distance; near-copy below "
                    f"percentile {memo.PERCENTILE:g} of real test -> train nearest distances",
    **WEIGHT_FREE_IMPLEMENTATIONS,
}


def evaluate(
    real: str | Path,                       # image folder, WS:split or .npz statistics
    fake: str | Path,                       # the same kinds; usually a `histosynth sample` folder
    out_dir: str | Path,
    metrics: list[str] | None = None,       # subset of METRICS; None: all
    n: int | None = None,                   # images per side; None: all
    train: str | Path | None = None,        # training tiles (memorization, references); default WS:train of REAL
    inception_weights: str | Path | None = None,
    crop: int | None = None,                # centre crop in px before every metric; None: whole images
    batch_size: int = 32,
    allow_unverified_weights: bool = False,  # tests and random weights only: such FIDs are not comparable
    device: str | None = None,
    features: list[str] | None = None,      # --features: encoder folders / hub ids for FD_<name>, KID_<name>
    resize: str | None = None,              # "real-to-fake[:filter]" | "fake-to-real[:filter]" when sizes differ
    mpp: float | None = None,               # microns per pixel of the compared images (descriptors)
    seed: int = 0,                          # subsets, bootstraps, C2ST/classifier training
) -> dict:
    """Compute the metrics, write eval.json, report.md and the grids into `out_dir`; return eval.json."""
    out_dir = Path(out_dir)
    wanted = _parse_metrics(metrics)
    if features:                 # naming an encoder asks for its distances
        wanted.add("fd")
    elif metrics is None:        # the default set has no encoder to measure with: nothing to say
        wanted.discard("fd")
    real_src, fake_src = parse_source(real), parse_source(fake)
    needs_train = wanted & ({"memorization"} | set(WEIGHT_FREE))
    train_src = _train_source(train, real_src) if needs_train else None
    skipped: dict[str, str] = {}
    if "memorization" in wanted and train_src is None:
        skipped["memorization"] = "needs the training tiles: pass --train (or name REAL by --workspace/--real-split)"
    sizes = check_sizes(real_src, fake_src, train_src, resize, n, seed)
    mpp = _compared_mpp(mpp, real_src, sizes)

    inception, inception_info = None, None
    if wanted & INCEPTION_METRICS:
        try:
            inception, inception_info = load_inception(inception_weights, allow_unverified_weights, device or "cpu")
        except InceptionWeightsMissing as exc:
            if wanted <= INCEPTION_METRICS:
                raise
            warn(f"skipping {', '.join(sorted(wanted & INCEPTION_METRICS))}: {exc}")
            skipped.update({m: str(exc) for m in wanted & INCEPTION_METRICS})
    encoders = {}
    if "fd" in wanted:
        encoders = {name: load_encoder(name, spec, device or "cpu") for name, spec in parse_features(features or [])}
        if not encoders:
            skipped["fd"] = "no encoder: pass --features FOLDER|HUB-ID (repeatable)"
    if {"fidelity", "descriptors"} & wanted:
        why = descriptors_available() or (None if mpp else "needs the images' microns per pixel: pass --mpp")
        skipped.update({m: why for m in {"fidelity", "descriptors"} & wanted if why})
    active = wanted - set(skipped)
    parts = _parts(active, inception is not None)
    sha = inception_info["sha256"] if inception_info else None
    common = dict(n=n, crop=crop, batch_size=batch_size, inception=inception, inception_sha256=sha,
                  encoders=encoders, mpp=mpp, seed=seed)

    with recording("evaluate", out_dir, config={"metrics": sorted(wanted), "n": n, "crop": crop, "resize": resize,
                                                "mpp": mpp, "features": features or []},
                   seeds={"subset": seed, "kid": 0, "stain_pixels": 0, "c2st": seed, "bootstrap": seed}) as manifest:
        real_stats, real_meta = set_stats(real_src, parts, resize_to=sizes["real_resize"],
                                          cache=_cache_path(real_src, out_dir, "real", n, crop, parts), **common)
        fake_stats, fake_meta = set_stats(fake_src, parts, resize_to=sizes["fake_resize"],
                                          cache=out_dir / "fake_stats.npz", **common)
        results, pairs = {}, None
        for name in sorted(active & INCEPTION_METRICS):
            _measure(name, results, skipped, real_stats, fake_stats)
        for name in encoders:
            _encoder_distances(name, results, skipped, real_stats, fake_stats)
        if "stain" in active:
            if _have("hed_stats", real_stats, fake_stats, skipped, "stain"):
                results["stain"] = stain_distance(real_stats["hed_stats"], real_stats["hed_pixels"],
                                                  fake_stats["hed_stats"], fake_stats["hed_pixels"])
        no_images = {"inception": None, "inception_sha256": None, "encoders": None}
        if "memorization" in active and _have("thumbs", real_stats, fake_stats, skipped, "memorization"):
            train_stats, train_meta = set_stats(train_src, {"thumbs"}, resize_to=sizes["real_resize"],
                                                cache=_cache_path(train_src, out_dir, "train", None, crop, {"thumbs"}),
                                                **{**common, **no_images, "n": None})
            if real_src.kind == "workspace" and real_src.split == "train":
                warn("REAL is the training split: the near-copy threshold should come from test tiles")
            result = memo.memorization(fake_stats["thumbs"], train_stats["thumbs"], real_stats["thumbs"])
            pairs = _closest_pairs(result, fake_stats, train_stats, train_src)
            results["memorization"] = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
            results["memorization"]["train"] = _describe(train_src, train_meta)
        free = active & set(WEIGHT_FREE)
        if free:
            wf_parts = parts & {"small", "descriptors"}
            train_wf = None
            if train_src is not None and train_src.kind != "npz" and wf_parts:
                train_wf, _ = set_stats(train_src, wf_parts, resize_to=sizes["real_resize"],
                                        cache=_cache_path(train_src, out_dir, "train", n, crop, wf_parts),
                                        **{**common, **no_images})
            records = read_requests(fake_src, fake_stats["ids"]) if "ids" in fake_stats else []
            ws_root = real_src.path if real_src.kind == "workspace" else (
                train_src.path if train_src is not None and train_src.kind == "workspace" else None)
            share = (results.get("memorization") or {}).get("near_copy_share")
            results.update(weight_free(free, real_stats, fake_stats, train_wf, records, ws_root, mpp, crop,
                                       skipped, share, seed=seed))

        report = {"metrics": results, "skipped": skipped,
                  "protocol": protocol(real_src, fake_src, real_meta, fake_meta, crop, inception_info)}
        report["protocol"]["encoders"] = {name: {**e.info, "covariance": COVARIANCE} for name, e in encoders.items()}
        report["protocol"].update(sizes=sizes["record"], mpp=mpp, subset_seed=seed)
        write_json(out_dir / "eval.json", report)
        grids = write_grids(out_dir, real_stats.get("preview", np.empty(0)), fake_stats.get("preview", np.empty(0)), pairs)
        write_markdown(out_dir, report, grids)
        manifest.results.update(metrics=results, skipped=skipped)
    info(f"wrote {out_dir / 'eval.json'} and {out_dir / 'report.md'}")
    return report


def _parts(active: set[str], have_inception: bool) -> set[str]:
    parts = {"inception"} if have_inception else set()
    parts |= {"stain"} if "stain" in active else set()
    parts |= {"thumbs"} if "memorization" in active else set()
    parts |= {"small"} if {"c2st", "classes"} & active else set()
    parts |= {"descriptors"} if {"fidelity", "descriptors"} & active else set()
    return parts


class BadOption(HistosynthError):
    exit_code = 2   # like the config's validation errors


RESIZE_RULES = ("real-to-fake", "fake-to-real")
RESIZE_FILTERS = ("bicubic", "bilinear", "lanczos", "box", "nearest")


def check_sizes(real: Source, fake: Source, train: Source | None, resize: str | None, n, seed) -> dict:
    """Image sizes of each set; a mismatch is refused unless `resize` names the rule and the filter."""
    def size(src):
        return ImageSet(src, n=1).raw_size() if src is not None and src.kind != "npz" else None

    real_size, fake_size = size(real), size(fake)
    train_size = size(train)
    rule, _, filt = (resize or "").partition(":")
    filt = filt or "bicubic"
    if resize and (rule not in RESIZE_RULES or filt not in RESIZE_FILTERS):
        raise BadOption(f"--resize {resize}: expected {' or '.join(RESIZE_RULES)}, optionally :FILTER "
                              f"({', '.join(RESIZE_FILTERS)}; default bicubic)")
    mismatch = real_size and fake_size and real_size != fake_size
    if mismatch and not resize:
        raise HistosynthError(f"REAL images are {real_size[1]}x{real_size[0]} px but FAKE images are "
                              f"{fake_size[1]}x{fake_size[0]} px: pass --resize real-to-fake or fake-to-real "
                              "(optionally :bicubic|bilinear|lanczos|box|nearest) to compare them")
    if train_size and real_size and train_size != real_size:
        raise HistosynthError(f"{train}: training images are {train_size[1]}x{train_size[0]} px, REAL images "
                              f"{real_size[1]}x{real_size[0]} px; they must be tiles of the same size")
    real_resize = (*fake_size, filt) if mismatch and rule == "real-to-fake" else None
    fake_resize = (*real_size, filt) if mismatch and rule == "fake-to-real" else None
    how = "none (same size)" if not mismatch else (
        f"{'real (and training) images' if real_resize else 'generated images'} resized to "
        f"{(real_resize or fake_resize)[1]}x{(real_resize or fake_resize)[0]} px with PIL {filt} "
        "(antialiased when shrinking), before any crop")
    record = {"real": list(real_size) if real_size else None, "fake": list(fake_size) if fake_size else None,
              "training": list(train_size) if train_size else None, "resize": how, "order": "[height, width]"}
    return {"real_resize": real_resize, "fake_resize": fake_resize, "record": record,
            "real_scale": (fake_size[1] / real_size[1]) if real_resize else 1.0}


def _compared_mpp(mpp: float | None, real: Source, sizes: dict) -> float | None:
    """Microns per pixel of the images as compared: --mpp, else the workspace's tile mpp (rescaled when the
    real tiles are resized to the generated images' size)."""
    if mpp is not None:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise BadOption(f"--mpp {mpp}: must be a positive finite number")
        return float(mpp)
    if real.kind == "workspace":
        return Workspace(real.path).config().slides.mpp / sizes["real_scale"]
    return None


def _parse_metrics(metrics) -> set[str]:
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    wanted = {m.strip().lower() for m in (metrics or METRICS) if m.strip()}
    unknown = wanted - set(METRICS)
    if unknown or not wanted:
        raise BadOption(f"--metrics: unknown {', '.join(sorted(unknown)) or '(none given)'}; choose from {','.join(METRICS)}")
    return wanted


def _train_source(train, real_src: Source) -> Source | None:
    if train is not None:
        return parse_source(train)
    if real_src.kind == "workspace":
        return Source("workspace", real_src.path, "train")
    return None


def _cache_path(src: Source, out_dir: Path, role: str, n: int | None, crop: int | None, parts: set[str]) -> Path:
    """Workspace sets are cached in the workspace (shared by every run's evaluation), others in out_dir.
    Training-tile sets are named by their parts: memorization's (all tiles) and the references' differ."""
    tag = "-" + "-".join(sorted(parts)) if role == "train" else ""
    if src.kind == "workspace":
        name = f"stats-{src.split}-n{n or 'all'}-crop{crop or 'none'}{tag}.npz"
        return Workspace(src.path).eval_cache_dir / name
    return out_dir / f"{role}{tag}_stats.npz"


def _have(key: str, real: dict, fake: dict, skipped: dict, metric: str) -> bool:
    missing = [side for side, stats in (("real", real), ("fake", fake)) if key not in stats]
    if missing:
        skipped[metric] = f"the {' and '.join(missing)} statistics file has no '{key}'"
    return not missing


def _measure(name: str, results: dict, skipped: dict, real: dict, fake: dict) -> None:
    key = "mu" if name == "fid" else "inception"
    if not _have(key, real, fake, skipped, name):
        return
    try:
        if name == "fid":
            if min(len(real.get("ids", [0, 0])), len(fake.get("ids", [0, 0]))) < 2:
                raise ValueError("FID needs at least 2 images per side")
            if "inception" in fake and len(fake["inception"]) < fake["inception"].shape[1]:
                results["fid"] = frechet_distance_low_rank(real["mu"], real["sigma"], fake["inception"])
            else:
                results["fid"] = frechet_distance(real["mu"], real["sigma"], fake["mu"], fake["sigma"])
        elif name == "kid":
            results["kid"] = kid(real["inception"], fake["inception"])
        else:
            results["pr"] = precision_recall(real["inception"], fake["inception"], k=PR_K)
    except ValueError as exc:
        skipped[name] = str(exc)


def _encoder_distances(name: str, results: dict, skipped: dict, real: dict, fake: dict) -> None:
    key = f"feat_{name}"
    if not _have(key, real, fake, skipped, f"FD_{name}"):
        return
    x, y = real[key].astype(np.float64), fake[key].astype(np.float64)
    if min(len(x), len(y)) < 2:
        skipped[f"FD_{name}"] = "needs at least 2 images per side"
        return
    mu, sigma = gaussian_stats(x)
    low_rank = len(y) < y.shape[1]
    results[f"FD_{name}"] = frechet_distance_low_rank(mu, sigma, y) if low_rank else frechet_distance(mu, sigma, *gaussian_stats(y))
    results[f"KID_{name}"] = {**kid(x, y), "dim": int(x.shape[1]), "n_real": len(x), "n_fake": len(y),
                              "singular_covariance": bool(min(len(x), len(y)) <= x.shape[1])}


def _closest_pairs(result: dict, fake_stats: dict, train_stats: dict, train_src: Source):
    """The PAIRS fakes closest to a training tile, each with that tile (for the report)."""
    if train_src.kind == "npz":
        return None
    order = np.argsort(result["nearest_distance"])[:PAIRS]
    fake_order = [i for i in order if i < len(fake_stats.get("preview", []))]
    if not fake_order:
        return None
    train_ids = [str(train_stats["ids"][result["nearest"][i]]) for i in fake_order]
    train_images = ImageSet(train_src).load(train_ids)
    return [(fake_stats["preview"][i], img) for i, img in zip(fake_order, train_images)]


def protocol(real_src: Source, fake_src: Source, real_meta: dict, fake_meta: dict, crop: int | None,
             inception_info: dict | None) -> dict:
    sample = sample_protocol(fake_src.path) if fake_src.kind == "folder" else {}
    return {
        "real": _describe(real_src, real_meta),
        "fake": _describe(fake_src, fake_meta),
        "n_real": real_meta.get("n"),
        "n_fake": fake_meta.get("n"),
        "crop": f"centre {crop}x{crop} px" if crop else "none (whole images)",
        "resize": RESIZE + "; as pytorch-fid, which PathLDM and the paper used, so FIDs are comparable with theirs",
        "inception": inception_info,
        "fakes_conditioned_on": _conditioning(sample),
        "sample": sample,
        "seeds": {"sample_seed": sample.get("seed"), "real_subset_seed": 0, "kid_subsets_seed": 0,
                  "stain_pixels_seed": 0},
        "implementations": IMPLEMENTATIONS,
        "versions": {**package_versions(), **package_versions(("scipy", "scikit-image", "torchvision"))},
    }


def _conditioning(sample: dict) -> dict:
    if not sample:
        return {"description": "unknown (not a histosynth sample folder)"}
    source = sample.get("source") or {}
    if sample.get("from_summaries"):
        return {"description": f"{sample.get('split')}-split reports (summary budget {source.get('budget')})",
                "split": sample.get("split"), "budget": source.get("budget")}
    return {"description": "user prompts", "split": None, "budget": None}


def _describe(src: Source, meta: dict) -> dict:
    return {"source": str(src), "kind": src.kind, "n": meta.get("n"), "stats_file": meta.get("stats_file"),
            "reused": meta.get("reused"),
            "format": meta.get("format", "histosynth")}

