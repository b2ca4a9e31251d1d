"""The standard FID network (TF-ported InceptionV3 of pytorch-fid), from a local weights file.

pytorch-fid's `InceptionV3` downloads its weights on construction, which cannot work offline, so
the same network is assembled here from pytorch-fid's own FID blocks and loaded from a file
checked by sha256. Inputs are resized exactly as pytorch-fid does (bilinear to 299 x 299,
align_corners=False, no antialiasing) so FIDs are comparable with PathLDM's and the paper's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..console import HistosynthError
from ..fileio import sha256_file

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # 95,628,359 bytes
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
ENV_VAR = "HISTOSYNTH_INCEPTION"
RESIZE = "bilinear to 299x299, align_corners=False, no antialias (pytorch-fid's InceptionV3 resize_input=True)"
FEATURE_DIM = 2048


class InceptionWeightsMissing(HistosynthError):
    pass


def how_to_get_weights() -> str:
    return (f"FID/KID need the FID Inception weights: download {WEIGHTS_URL} on a machine with internet "
            f"(sha256 {WEIGHTS_SHA256[:16]}...), then pass --inception-weights FILE or set {ENV_VAR}=FILE")


def find_weights(path: str | Path | None = None) -> Path:
    """The weights file: the argument, else $HISTOSYNTH_INCEPTION, else torch hub's cache (pytorch-fid's)."""
    explicit = path or os.environ.get(ENV_VAR)
    if explicit:
        if not Path(explicit).is_file():
            raise InceptionWeightsMissing(f"{explicit}: Inception weights file not found. {how_to_get_weights()}")
        return Path(explicit)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME
    if cached.is_file():
        return cached
    raise InceptionWeightsMissing(how_to_get_weights())


def verify_weights(path: Path, allow_unverified: bool = False) -> str:
    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256 and not allow_unverified:
        raise HistosynthError(
            f"{path}: sha256 {digest[:16]}... is not that of {WEIGHTS_NAME} ({WEIGHTS_SHA256[:16]}...); "
            "FIDs from other weights are not comparable (--allow-unverified-weights to use it anyway)"
        )
    return digest


def build_fid_inception() -> nn.Module:
    """torchvision's InceptionV3 with pytorch-fid's FID blocks (as pytorch_fid.inception.fid_inception_v3)."""
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class PoolFeatures(nn.Module):
    """Images in [0, 1] -> 2048-d pool3 features, the layers and order of pytorch-fid's block 3."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        i = inception
        self.layers = nn.Sequential(
            i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d, i.Mixed_6e,
            i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers(2 * x - 1).flatten(1)


def load_inception(path: str | Path | None = None, allow_unverified: bool = False,
                   device: str | torch.device = "cpu") -> tuple[PoolFeatures, dict]:
    """The feature extractor and what to record about it (file, sha256, resizing)."""
    weights = find_weights(path)
    digest = verify_weights(weights, allow_unverified)
    net = build_fid_inception()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    info = {"weights": str(weights), "sha256": digest, "verified": digest == WEIGHTS_SHA256,
            "network": "pytorch-fid FID InceptionV3 (pt_inception-2015-12-05), pool3 2048-d", "resize": RESIZE}
    return PoolFeatures(net).eval().requires_grad_(False).to(device), info
