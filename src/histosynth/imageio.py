"""Image I/O: PNGs with provenance text chunks, tensor <-> uint8 conversion, contact sheets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, PngImagePlugin

from .fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def save_png(path: str | Path, image: np.ndarray | Image.Image, metadata: dict[str, str] | None = None) -> None:
    """Write a PNG atomically; `metadata` goes into tEXt chunks (e.g. synthetic=true, prompt, seed)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)


def png_metadata(path: str | Path) -> dict[str, str]:
    with Image.open(path) as img:
        return dict(getattr(img, "text", {}) or {})


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def list_images(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def to_uint8(images) -> np.ndarray:
    """[-1, 1] float tensor/array [B, C, H, W] -> uint8 [B, H, W, C]."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return arr.transpose(0, 2, 3, 1)


def to_unit_range(images: np.ndarray):
    """uint8 [B, H, W, C] -> float32 torch tensor [B, C, H, W] in [-1, 1]."""
    import torch

    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def contact_sheet(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2,
                  background: int = 255) -> np.ndarray:
    """Tile uint8 HWC images of one size into a grid."""
    if len(images) == 0:
        raise ValueError("contact_sheet: no images")
    h, w = images[0].shape[:2]
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), background, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = img[..., :3]
    return sheet
