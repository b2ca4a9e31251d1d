"""Does the image show what its prompt asked for? Descriptor and class fidelity, with shuffled-prompt controls.

*Descriptor fidelity*: each generated image's descriptor (histosynth.slides.descriptors, measured
on its pixels) against the bin its prompt requested: Spearman's rho between the measured value and
the requested level (low < medium < high), and bin accuracy (the measured value, binned with the
same edges, equals the request). The control repeats both with the requests shuffled (seeded): a
generator is steered only when its figure clears the control's CI.
*Descriptor distributions*: 1-D Wasserstein distance per descriptor, real vs generated.
*Class fidelity*: a classifier (c2st's CNN recipe, trained on real training tiles) predicts each
generated image's class; balanced accuracy vs the class its prompt asked for, with its confusion
matrix; train-on-synthetic/test-on-real beside train-on-real. CIs are 95 % percentile bootstraps.
"""

from __future__ import annotations

import numpy as np

from .c2st import RECIPE, bootstrap_ci, small_images, train_classifier

MAX_TRAIN = 2000   # real training tiles for the class classifier (a seeded subset beyond this)

LEVELS = ("low", "medium", "high")
# Template field -> descriptor name (histosynth.text.condition's words), so prompts' bins read either way.
FIELDS = {"nuclei": "nuclei_density", "nuclear_area": "nuclear_area", "fat": "fat_fraction",
          "stroma": "stroma_fraction", "h": "h_fraction", "e": "e_fraction", "tissue": "tissue_fraction"}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _fidelity(values: np.ndarray, measured_bins: np.ndarray, requested: np.ndarray, seed: int) -> dict:
    rho = spearman(values, requested)
    accuracy = float(np.mean(measured_bins == requested))
    return {"spearman": rho,
            "spearman_ci95": bootstrap_ci(lambda i: spearman(values[i], requested[i]), len(values), seed=seed),
            "bin_accuracy": accuracy,
            "bin_accuracy_ci95": bootstrap_ci(lambda i: float(np.mean(measured_bins[i] == requested[i])),
                                              len(values), seed=seed),
            "n": int(len(values))}


def descriptor_fidelity(measured, requested: list[dict[str, str]], edges: dict, seed: int = 0) -> dict:
    """Per descriptor with requests: fidelity and its shuffled-prompt control. `measured` is describe()'s
    DataFrame for the generated images, `requested` one {descriptor: level word} per image."""
    from ..slides.descriptors import bin_words

    words = bin_words(measured, edges, levels=LEVELS)
    rng = np.random.default_rng(seed)
    out = {}
    for name in measured.columns:
        asked = [i for i, r in enumerate(requested) if r.get(name) in LEVELS]
        if len(asked) < 3 or name not in edges:
            continue
        want = np.array([LEVELS.index(requested[i][name]) for i in asked])
        got = np.array([LEVELS.index(words[i][name]) for i in asked])
        values = measured[name].to_numpy()[asked]
        out[name] = {**_fidelity(values, got, want, seed),
                     "shuffled_control": _fidelity(values, got, rng.permutation(want), seed),
                     "chance_bin_accuracy": 1 / len(LEVELS),
                     "requested_counts": {lvl: int(np.sum(want == k)) for k, lvl in enumerate(LEVELS)}}
    return out


def requested_bins(record: dict) -> dict[str, str]:
    """A metadata.jsonl record's requested bins: `bins` ({descriptor or template field: level}) or top-level
    fields named like descriptors/template fields."""
    raw = dict(record.get("bins") or {})
    raw.update({k: v for k, v in record.items() if k in FIELDS or k in FIELDS.values()})
    return {FIELDS.get(k, k): str(v) for k, v in raw.items() if str(v) in LEVELS}


def descriptor_distances(real, fake) -> dict:
    """W1 per descriptor in its own unit, and relative to the real set's std (comparable across descriptors)."""
    from scipy.stats import wasserstein_distance

    out = {}
    for name in real.columns:
        r, f = real[name].to_numpy(float), fake[name].to_numpy(float)
        r, f = r[np.isfinite(r)], f[np.isfinite(f)]
        if len(r) and len(f):
            w1 = float(wasserstein_distance(r, f))
            std = float(np.std(r))
            out[name] = {"w1": w1, "w1_over_real_std": w1 / std if std > 0 else None,
                         "real_median": float(np.median(r)), "fake_median": float(np.median(f))}
    return out


def balanced_accuracy(truth: np.ndarray, pred: np.ndarray, classes: int) -> float:
    present = [c for c in range(classes) if np.any(truth == c)]
    return float(np.mean([np.mean(pred[truth == c] == c) for c in present]))


def _scored(truth: np.ndarray, pred: np.ndarray, classes: int, seed: int) -> dict:
    return {"balanced_accuracy": balanced_accuracy(truth, pred, classes),
            "ci95": bootstrap_ci(lambda i: balanced_accuracy(truth[i], pred[i], classes), len(truth),
                                 strata=truth, seed=seed),
            "n": int(len(truth))}


def class_fidelity(train_images: np.ndarray, train_labels: list[str], test_images: np.ndarray,
                   test_labels: list[str], fake_images: np.ndarray, fake_labels: list[str], seed: int = 0,
                   epochs: int = RECIPE["epochs"]) -> dict:
    """Classifier on real train tiles: its real held-out score (the ceiling), its score on the fakes against
    their requested class, a shuffled-request control, and train-on-synthetic/test-on-real."""
    names = sorted(set(train_labels))
    if len(names) < 2:  # one class: every score is 1 and chance is 1, which says nothing
        raise ValueError(f"needs at least two classes among the labelled training tiles (found {names})")
    unknown = sorted(set(fake_labels) - set(names))
    if unknown:
        raise ValueError(f"requested classes not among the training tiles' labels: {', '.join(unknown)}")
    code = {c: i for i, c in enumerate(names)}
    k = len(names)
    if len(train_images) > MAX_TRAIN:
        keep = np.sort(np.random.default_rng(seed).choice(len(train_images), MAX_TRAIN, replace=False))
        train_images, train_labels = train_images[keep], [train_labels[i] for i in keep]
    xtr, ytr = small_images(train_images), np.array([code[c] for c in train_labels])
    xte = small_images(test_images)
    yte = np.array([code.get(c, -1) for c in test_labels])
    xf, yf = small_images(fake_images), np.array([code[c] for c in fake_labels])
    predict = train_classifier(xtr, ytr, k, seed=seed, epochs=epochs)
    known = yte >= 0
    pred_fake = predict(xf).argmax(1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (yf, pred_fake), 1)
    tstr = train_classifier(xf, yf, k, seed=seed, epochs=epochs)(xte[known]).argmax(1)
    real = _scored(yte[known], predict(xte[known]).argmax(1), k, seed)
    return {
        "classes": names, "chance": 1 / k,
        "real_heldout_ceiling": real,
        "generated": _scored(yf, pred_fake, k, seed),
        "shuffled_control": _scored(np.random.default_rng(seed).permutation(yf), pred_fake, k, seed),
        "confusion_requested_x_predicted": confusion.tolist(),
        "train_on_synthetic_test_on_real": _scored(yte[known], tstr, k, seed),
        "train_on_real_test_on_real": real,
        "protocol": {**RECIPE, "epochs": epochs, "seed": seed, "classifier": "c2st's CNN with one output per class",
                     "max_train_tiles": MAX_TRAIN,
                     "ci": "percentile bootstrap, resampled within each true class"},
    }
