"""Does the model copy its training tiles? The nearest training tile of every generated image.

Images are compared as 32 x 32 thumbnails (area-averaged RGB, distance = RMS pixel difference in
[0, 1]): no downloaded weights, and a near-copy stays a near-copy at this scale. A generated image
is a near-copy when it is closer to a training tile than 99% of real TEST tiles are to their
nearest training tile (the 1st percentile of test-to-train nearest-neighbour distances): real
unseen tissue sets the scale of "too close".
"""

from __future__ import annotations

import numpy as np
import torch

THUMB = 32          # thumbnail edge in pixels
PERCENTILE = 1.0    # near-copy threshold: this percentile of test -> train distances


def thumbnails(images: np.ndarray, size: int = THUMB) -> np.ndarray:
    """uint8 [B, H, W, 3] -> uint8 [B, size * size * 3]."""
    from PIL import Image

    thumbs = [np.asarray(Image.fromarray(img).resize((size, size), Image.BOX)) for img in images]
    return np.stack(thumbs).reshape(len(images), -1)


def nearest(queries: np.ndarray, refs: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """RMS distance and index of the nearest reference for each query (chunked: train sets are large)."""
    q = torch.as_tensor(queries, dtype=torch.float32) / 255
    best_d = torch.full((len(q),), float("inf"))
    best_i = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(refs), chunk):
        r = torch.as_tensor(refs[start:start + chunk], dtype=torch.float32) / 255
        d, i = torch.cdist(q, r).min(dim=1)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return (best_d / np.sqrt(q.shape[1])).numpy(), best_i.numpy()


def memorization(fake: np.ndarray, train: np.ndarray, test: np.ndarray, percentile: float = PERCENTILE) -> dict:
    """Nearest training tile per fake, the near-copy threshold from test tiles, the share of near-copies."""
    fake_d, fake_i = nearest(fake, train)
    test_d, _ = nearest(test, train)
    threshold = float(np.percentile(test_d, percentile))
    near = fake_d < threshold
    return {
        "threshold": threshold,
        "threshold_rule": f"percentile {percentile:g} of real test -> train nearest distances ({len(test)} test tiles)",
        "near_copies": int(near.sum()),
        "near_copy_share": float(near.mean()),
        "fake_nn_distance_median": float(np.median(fake_d)),
        "test_nn_distance_median": float(np.median(test_d)),
        "distance": f"RMS RGB difference in [0, 1] of {THUMB}x{THUMB} area-averaged thumbnails",
        "n_train": len(train),
        "nearest": fake_i,          # arrays: for the report's grid, not for eval.json
        "nearest_distance": fake_d,
    }
