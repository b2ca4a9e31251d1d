"""Classifier two-sample test (C2ST): can a small CNN, trained from scratch, tell real tiles from generated ones?

No downloaded weights: the network and its recipe are fixed and seeded (RECIPE), so a number is
reproducible and comparable between runs. Images are area-resized to SIZE px; the AUROC comes
from k-fold cross-validation (out-of-fold scores pooled), with a 95 % bootstrap CI. 0.5 means
the classifier cannot tell the sets apart; 1.0 that every image gives itself away. The same
network, with k outputs, is the tissue-class classifier of `classes.py`.
"""

from __future__ import annotations

import numpy as np

SIZE = 64
MAX_PER_SIDE = 1000   # seeded subset beyond this: CPU minutes, not hours, and the CI is already narrow
RECIPE = {"size": SIZE, "net": "3 conv blocks (3x3, stride 2, 16-32-64 ch, BatchNorm, ReLU) + global mean pool + linear",
          "optimizer": "AdamW lr 2e-3, weight decay 1e-4", "epochs": 30, "batch": 32,
          "augmentation": "random dihedral (flips, 90-degree rotations)", "folds": 5, "bootstrap": 1000,
          "fold_assignment": "matched real/fake pairs (min-cost matching of 8x8 thumbnails) share a fold",
          "max_per_side": MAX_PER_SIDE}


def small_images(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 [B, H, W, 3] -> uint8 [B, size, size, 3] (PIL box filter down, bicubic up)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    method = Image.BOX if images.shape[1] >= size else Image.BICUBIC
    return np.stack([np.asarray(Image.fromarray(i).resize((size, size), method)) for i in images])


def make_net(classes: int):
    from torch import nn

    def block(cin: int, cout: int):
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, classes))


def _tensor(images: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x


def train_classifier(images: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0,
                     epochs: int = RECIPE["epochs"]):
    """The fixed recipe: a fresh seeded network fitted to (images, labels); returns a predict function."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = make_net(classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    x, y = _tensor(images), torch.as_tensor(labels, dtype=torch.long)
    batch = RECIPE["batch"]
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            if len(idx) < 2:   # BatchNorm needs two samples
                continue
            xb = _dihedral(x[idx], int(torch.randint(8, (1,), generator=gen)))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    @torch.no_grad()
    def predict(test_images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes]."""
        return torch.softmax(net(_tensor(test_images)), dim=1).numpy()

    return predict


def _dihedral(x, k: int):
    import torch

    x = torch.rot90(x, k % 4, dims=(2, 3))
    return x.flip(3) if k >= 4 else x


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = Mann-Whitney U / (n_pos n_neg), ties counted half."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(statistic, n: int, strata: np.ndarray | None = None, resamples: int = RECIPE["bootstrap"],
                 seed: int = 0) -> list[float]:
    """95 % percentile bootstrap CI of statistic(indices); resampled within strata when given."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)] if strata is not None else [np.arange(n)]
    values = []
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(g, len(g), replace=True) for g in groups])
        value = statistic(idx)
        if np.isfinite(value):
            values.append(value)
    if not values:
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def matched_folds(real: np.ndarray, fake: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each image ([real..., fake...]): every fake shares its fold with the real image matched to it
    (minimum-cost matching of 8x8 thumbnails). Plain random folds remove a test image's look-alikes from
    its own side of the training set only, which biases AUROC below 0.5 on similar sets (measured on the
    Kather tiles: 0.40-0.47 real vs real); moving matched pairs together keeps training sets balanced."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    thumbs = [small_images(x, 8).reshape(len(x), -1).astype(np.float32) for x in (real, fake)]
    rows, cols = linear_sum_assignment(cdist(thumbs[0], thumbs[1]))
    pair_fold = rng.permutation(len(rows)) % folds
    fold_of = np.zeros(len(real) + len(fake), dtype=int)
    fold_of[rows], fold_of[len(real) + cols] = pair_fold, pair_fold
    return fold_of


def c2st(real: np.ndarray, fake: np.ndarray, seed: int = 0, folds: int = RECIPE["folds"],
         epochs: int = RECIPE["epochs"]) -> dict:
    """Cross-validated AUROC of the fixed CNN telling `fake` (positive) from `real`; equal counts per side."""
    n = min(len(real), len(fake), MAX_PER_SIDE)
    if n < folds:
        raise ValueError(f"C2ST needs at least {folds} images per side, got {len(real)} real and {len(fake)} fake")
    rng = np.random.default_rng(seed)
    real = small_images(real[np.sort(rng.choice(len(real), n, replace=False))])
    fake = small_images(fake[np.sort(rng.choice(len(fake), n, replace=False))])
    images, labels = np.concatenate([real, fake]), np.repeat([0, 1], n)
    fold_of = matched_folds(real, fake, folds, rng)
    scores = np.zeros(2 * n)
    for k in range(folds):
        test = fold_of == k
        predict = train_classifier(images[~test], labels[~test], 2, seed=seed + k, epochs=epochs)
        scores[test] = predict(images[test])[:, 1]
    value = auroc(scores, labels)
    ci = bootstrap_ci(lambda idx: auroc(scores[idx], labels[idx]), 2 * n, strata=labels, seed=seed)
    return {"auroc": value, "ci95": ci, "n_per_side": n, "chance": 0.5,
            "protocol": {**RECIPE, "folds": folds, "epochs": epochs, "seed": seed,
                         "ci": "percentile bootstrap of pooled out-of-fold scores, resampled within each side",
                         "positive": "generated"}}
