"""C2ST on real H&E (the Kather 2016 tiles of ../shared/data): real vs real is chance, real vs blurred is not."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_file
from histosynth.evaluate.c2st import auroc, c2st, small_images
from histosynth.imageio import list_images, load_rgb


def kather_tiles() -> tuple[np.ndarray, list[str], list[int], list[np.ndarray]]:
    """All 124 tiles at 64 px (both sets), their class names, native widths and native images."""
    root = shared_file("tiles")
    paths = [p for p in sorted(list_images(root)) if p.parent.name[:2].isdigit()]
    images = [load_rgb(p) for p in paths]
    return (np.stack([small_images(i[None])[0] for i in images]), [p.parent.name for p in paths],
            [i.shape[1] for i in images], images)


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


@pytest.mark.unit
def test_auroc_is_mann_whitney():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([1.0, 1.0, 1.0, 1.0]), np.array([0, 1, 0, 1])) == 0.5  # ties count half


def test_c2st_real_vs_real_is_chance_and_blur_is_found():
    from scipy.ndimage import gaussian_filter

    small, _, widths, native = kather_tiles()
    a, b = halves(len(small))
    same = c2st(small[a], small[b], seed=0)
    lo, hi = same["ci95"]
    assert lo < 0.5 < hi, same["auroc"]
    # The same second half, blurred at native resolution (sigma = 1.5 px at the 64 px scale of the test).
    blurred = np.stack([small_images(gaussian_filter(native[i].astype(float), (1.5 * widths[i] / 64,) * 2 + (0,))
                                     .round().astype(np.uint8)[None])[0] for i in b])
    blur = c2st(small[a], blurred, seed=0)
    assert blur["auroc"] > 0.9 and blur["ci95"][0] > 0.75, blur
    assert blur["protocol"]["fold_assignment"].startswith("matched")
