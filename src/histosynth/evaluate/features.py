"""Image encoders for Frechet distance and KID beyond Inception: timm, Hugging Face and open_clip towers.

`--features SPEC` names a local folder or a Hugging Face hub id (resolved in the local cache only:
nothing is downloaded). The loader is told by the folder's files, as each library saves them:
`open_clip_config.json` -> open_clip, `config.json` with `architecture` -> timm, `config.json`
with `model_type` -> transformers AutoModel + AutoImageProcessor. Images are prepared by the
model's own documented preprocessing (its config: resize, crop, mean/std, interpolation), never a
re-implementation, and the embedding is the one each library documents as the image feature:
timm's pooled pre-logits (`num_classes=0`), `get_image_features` for CLIP-style transformers
models, else `pooler_output` (the CLS token when the model has no pooler), open_clip's
`encode_image`. A folder holding a `random_init.txt` is marked as randomly initialised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..console import HistosynthError
from ..fileio import sha256_file

RANDOM_MARK = "random_init.txt"   # tests save random models with this file: reports then say so
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
HUB_PREFIXES = ("hf-hub:", "timm:", "hf:", "open_clip:")


@dataclass
class Encoder:
    name: str                                     # FD_<name>, KID_<name>
    info: dict                                    # identity, weights hash, preprocessing: for eval.json
    preprocess: Callable[[list], "object"]        # list of PIL images -> float tensor [B, 3, H, W]
    embed: Callable[["object"], "object"]         # tensor -> [B, D]
    device: str = "cpu"
    modules: list = field(default_factory=list)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> float32 [B, D]."""
        import torch
        from PIL import Image

        with torch.no_grad():
            x = self.preprocess([Image.fromarray(img) for img in images]).to(self.device)
            return self.embed(x).float().cpu().numpy()


def parse_features(specs: list[str]) -> list[tuple[str, str]]:
    """`[NAME=]SPEC` items -> (name, spec); `inception` is the FID network and stays out."""
    out: list[tuple[str, str]] = []
    for item in specs:
        name, sep, spec = item.partition("=")
        if not sep or "/" in name or not name:
            name, spec = default_name(item), item
        if spec.lower() == "inception":
            continue
        if name in {n for n, _ in out}:
            raise HistosynthError(f"--features {item}: the name '{name}' is used twice; write NAME=SPEC")
        out.append((name, spec))
    return out


def default_name(spec: str) -> str:
    tail = spec.rstrip("/").split(":")[-1].split("/")[-1] or "encoder"
    return re.sub(r"[^a-z0-9]+", "_", tail.lower()).strip("_")


def load_encoder(name: str, spec: str, device: str = "cpu") -> Encoder:
    folder, source = resolve(spec)
    loader = detect_loader(folder)
    build = {"timm": _timm, "transformers": _transformers, "open_clip": _open_clip}[loader]
    encoder = build(name, folder, device)
    encoder.info.update(loader=loader, spec=spec, source=source, folder=str(folder), **weights_identity(folder),
                        random_weights=(folder / RANDOM_MARK).exists())
    return encoder


def resolve(spec: str) -> tuple[Path, str]:
    """A local folder, or a hub id found in the local Hugging Face cache (offline: never downloaded)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, "folder"
    if path.exists() or spec.startswith((".", "/", "~")):
        raise HistosynthError(f"--features {spec}: not a model folder")
    repo = spec
    for prefix in HUB_PREFIXES:
        repo = repo.removeprefix(prefix)
    if repo.count("/") != 1:
        raise HistosynthError(f"--features {spec}: not a folder, `inception` or a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True)), f"hub:{repo}"
    except Exception as exc:  # noqa: BLE001 - every cache miss reads the same to the user
        raise HistosynthError(f"--features {spec}: not in the local Hugging Face cache ({exc.__class__.__name__}); "
                              "download it on a machine with internet and copy the folder, then pass the folder") from None


def detect_loader(folder: Path) -> str:
    if (folder / "open_clip_config.json").exists():
        return "open_clip"
    config = folder / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        if "architecture" in data:
            return "timm"
        if "model_type" in data:
            return "transformers"
    raise HistosynthError(f"{folder}: no open_clip_config.json, timm config.json (architecture) or "
                          "transformers config.json (model_type): not an image encoder folder")


def weights_identity(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise HistosynthError(f"{folder}: no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    hashes = {str(p.relative_to(folder)): sha256_file(p) for p in files}
    import hashlib

    combined = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in hashes.items()).encode()).hexdigest()
    return {"weights_sha256": combined, "weights_files": hashes}


def _timm(name: str, folder: Path, device: str) -> Encoder:
    import timm
    import torch

    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval().to(device)
    data_cfg = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**data_cfg, is_training=False)
    info = {"architecture": model.pretrained_cfg.get("architecture"), "dim": model.num_features,
            "embedding": "timm pooled pre-logits features (num_classes=0)",
            "preprocessing": {"library": "timm.data.create_transform(resolve_model_data_config(model))",
                              **_jsonable(data_cfg)}}
    return Encoder(name, info, lambda imgs: torch.stack([transform(i) for i in imgs]), model, device, [model])


def _transformers(name: str, folder: Path, device: str) -> Encoder:
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(folder).eval().to(device)
    processor = AutoImageProcessor.from_pretrained(folder)
    keep = ("size", "crop_size", "do_resize", "do_center_crop", "resample", "image_mean", "image_std",
            "do_rescale", "rescale_factor", "do_normalize")
    settings = {k: getattr(processor, k) for k in keep if hasattr(processor, k)}
    if hasattr(model, "get_image_features"):
        embed, how = (lambda x: _tensor(model.get_image_features(pixel_values=x))), "get_image_features"
    else:
        embed, how = (lambda x: _pooled(model(pixel_values=x))), "pooler_output, else last_hidden_state[:, 0] (CLS)"
    info = {"architecture": type(model).__name__, "dim": None, "embedding": how,
            "preprocessing": {"library": f"transformers {type(processor).__name__} (the folder's preprocessor_config.json)",
                              **_jsonable(settings)}}
    return Encoder(name, info, lambda imgs: processor(images=imgs, return_tensors="pt")["pixel_values"],
                   embed, device, [model])


def _open_clip(name: str, folder: Path, device: str) -> Encoder:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    model.eval()
    import torch

    info = {"architecture": type(model).__name__, "dim": None,
            "embedding": "open_clip encode_image (unnormalised)",
            "preprocessing": {"library": "open_clip.create_model_and_transforms (the folder's preprocess_cfg)",
                              "transform": repr(preprocess).replace("\n", " ")}}
    return Encoder(name, info, lambda imgs: torch.stack([preprocess(i) for i in imgs]),
                   lambda x: model.encode_image(x), device, [model])


def _pooled(out):
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out.last_hidden_state[:, 0]


def _tensor(out):
    return out if not hasattr(out, "pooler_output") else out.pooler_output  # transformers >= 5 may wrap it


def _jsonable(data: dict) -> dict:
    return json.loads(json.dumps(data, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))
