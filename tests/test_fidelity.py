"""Descriptor and class fidelity on real H&E (Kather 2016 tiles): a generator that obeys its prompt scores,
one that ignores it gets a CI containing 0 (Spearman) or chance (class); evaluate reads the requests from
metadata.jsonl and reports every weight-free metric beside its real-vs-real reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import descriptor_standin
from conftest import shared_file
from histosynth.console import HistosynthError
from histosynth.evaluate.fidelity import LEVELS, class_fidelity, descriptor_fidelity, requested_bins
from histosynth.evaluate.run import evaluate
from histosynth.imageio import list_images, load_rgb, save_png

KATHER_224 = "tiles/kather2016_tiles_tfds_resized224"


@pytest.fixture
def descriptors(monkeypatch):
    """histosynth.slides.descriptors: the real module when present, else the test stand-in (same interface)."""
    import sys
    import types

    import histosynth.slides

    try:
        import histosynth.slides.descriptors as module
    except ImportError:
        module = types.ModuleType("histosynth.slides.descriptors")
        for name in ("DESCRIPTORS", "describe", "fit_edges", "bin_words"):
            setattr(module, name, getattr(descriptor_standin, name))
        monkeypatch.setitem(sys.modules, "histosynth.slides.descriptors", module)
        monkeypatch.setattr(histosynth.slides, "descriptors", module, raising=False)
    return module


def kather(relative: str = KATHER_224) -> tuple[list[Path], np.ndarray, list[str]]:
    paths = sorted(p for p in list_images(shared_file(relative)) if p.parent.name[:2].isdigit())
    return paths, np.stack([load_rgb(p) for p in paths]), [p.parent.name for p in paths]


@pytest.mark.unit
def test_requested_bins_read_either_name():
    assert requested_bins({"bins": {"nuclei": "high"}, "fat": "low", "prompt": "x"}) == \
        {"nuclei_density": "high", "fat_fraction": "low"}
    assert requested_bins({"bins": {"nuclei_density": "very high"}}) == {}


def test_descriptor_fidelity_obeying_and_ignoring(descriptors):
    _, images, _ = kather()
    measured = descriptors.describe(images, 0.33)
    names = [n for n in measured.columns if measured[n].nunique() > 10]
    edges = descriptors.fit_edges(measured, names)
    own = descriptors.bin_words(measured, edges, levels=LEVELS)          # an obedient generator
    obey = descriptor_fidelity(measured[names], own, edges)
    for name in names:
        assert obey[name]["spearman_ci95"][0] > 0.5 and obey[name]["bin_accuracy"] == 1.0
    # A generator that ignores its prompt: requests drawn independently of the images. A 95% CI must
    # contain 0 (Spearman) and chance (bin accuracy) in about 95% of such draws: checked over 20 draws.
    name = names[0]
    rng = np.random.default_rng(0)
    hits = {"spearman": 0, "accuracy": 0, "control": 0}
    for draw in range(20):
        ignored = [{name: LEVELS[rng.integers(3)]} for _ in own]
        result = descriptor_fidelity(measured[[name]], ignored, {name: edges[name]}, seed=draw)[name]
        hits["spearman"] += result["spearman_ci95"][0] < 0 < result["spearman_ci95"][1]
        hits["accuracy"] += result["bin_accuracy_ci95"][0] < 1 / 3 < result["bin_accuracy_ci95"][1]
        control = result["shuffled_control"]["spearman_ci95"]
        hits["control"] += control[0] < 0 < control[1]
    assert min(hits.values()) >= 17, hits


def test_class_fidelity_obeying_and_ignoring():
    _, images, labels = kather()
    perm = np.random.default_rng(0).permutation(len(images))
    tr, te = np.sort(perm[:50]), np.sort(perm[50:])
    train, test = images[tr], images[te]
    train_labels, test_labels = [labels[i] for i in tr], [labels[i] for i in te]
    # Obedient "generator": real held-out tiles, each requesting its own class.
    obey = class_fidelity(train, train_labels, test, test_labels, test, test_labels, seed=0)
    chance = obey["chance"]
    assert chance == pytest.approx(1 / 8)
    assert obey["real_heldout_ceiling"]["ci95"][0] > chance
    assert obey["generated"]["ci95"][0] > chance
    lo, hi = obey["shuffled_control"]["ci95"]
    assert lo < chance < hi
    # Ignoring its prompt: the same images, requested classes drawn at random.
    rng = np.random.default_rng(1)
    random_labels = [sorted(set(labels))[i] for i in rng.integers(8, size=len(te))]
    ignore = class_fidelity(train, train_labels, test, test_labels, test, random_labels, seed=0)
    lo, hi = ignore["generated"]["ci95"]
    assert lo < chance < hi, ignore["generated"]
    assert np.asarray(ignore["confusion_requested_x_predicted"]).sum() == len(te)


def _class_folders(root: Path, paths: list[Path], rows) -> Path:
    for i in rows:
        (root / paths[i].parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[i], root / paths[i].parent.name / paths[i].name)
    return root


def test_evaluate_weight_free_end_to_end(descriptors, tmp_path):
    paths, images, labels = kather()
    perm = np.random.default_rng(0).permutation(len(paths))
    train = _class_folders(tmp_path / "train", paths, perm[:50])
    real = _class_folders(tmp_path / "test", paths, perm[50:])
    # A sample-like folder: obedient "generated" images with their requests in metadata.jsonl.
    fake = tmp_path / "fake"
    measured = descriptors.describe(images[perm[50:]], 0.33)
    records = []
    for k, i in enumerate(perm[50:]):
        save_png(fake / f"{k:05d}.png", images[i], {"synthetic": "true"})
        bins = {"tissue_fraction": "high" if measured["tissue_fraction"].iloc[k] > 0.9 else "low"}
        records.append({"file": f"{k:05d}.png", "prompt": labels[i], "label": labels[i], "bins": bins})
    (fake / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = evaluate(real, fake, tmp_path / "eval", metrics=["fidelity", "descriptors", "c2st", "classes",
                                                               "memorization"], train=train, mpp=0.33)
    m, p = report["metrics"], report["protocol"]
    assert report["skipped"] == {}
    assert p["sizes"]["real"] == p["sizes"]["fake"] == [224, 224] and p["mpp"] == 0.33
    share = m["memorization"]["near_copy_share"]
    for name in ("fidelity", "descriptors", "c2st"):
        assert m[name]["memorization_near_copy_share"] == share and m[name]["real_reference"]
    assert m["classes"]["memorization_near_copy_share"] == share
    # The "generated" images are the real test tiles themselves: C2ST cannot tell them apart ...
    assert m["c2st"]["generated"]["ci95"][0] < 0.5 < m["c2st"]["generated"]["ci95"][1]
    assert all(d["w1"] == 0 for d in m["descriptors"]["generated"].values())
    # ... they obey their requests, and the classifier's score on them is its held-out score.
    fid = m["fidelity"]["generated"]["tissue_fraction"]
    assert fid["spearman_ci95"][0] > 0.3 and fid["n"] == len(records)
    assert m["classes"]["generated"]["balanced_accuracy"] == pytest.approx(
        m["classes"]["real_heldout_ceiling"]["balanced_accuracy"])
    assert "train_on_synthetic_test_on_real" in m["classes"] and "fidelity" in p["implementations"]
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "C2ST" in md


@pytest.mark.unit
def test_sizes_must_match_unless_resize_names_the_rule(tmp_path):
    paths, images, _ = kather()
    real = tmp_path / "real"
    for i in range(6):
        save_png(real / f"{i}.png", images[i][:64, :64])
    fake = tmp_path / "fake"
    for i in range(6):
        save_png(fake / f"{i}.png", images[i + 6][:128, :128], {"synthetic": "true"})
    with pytest.raises(HistosynthError, match="64x64 px but FAKE images are 128x128 px: pass --resize"):
        evaluate(real, fake, tmp_path / "eval", metrics=["stain"])
    assert not (tmp_path / "eval").exists()  # nothing half-written
    with pytest.raises(HistosynthError, match="--resize sideways"):
        evaluate(real, fake, tmp_path / "eval", metrics=["stain"], resize="sideways")
    report = evaluate(real, fake, tmp_path / "eval", metrics=["stain"], resize="fake-to-real:lanczos")
    sizes = report["protocol"]["sizes"]
    assert sizes["real"] == [64, 64] and sizes["fake"] == [128, 128] and "lanczos" in sizes["resize"]
    report = evaluate(real, fake, tmp_path / "eval2", metrics=["stain"], resize="real-to-fake")
    assert "real (and training) images resized to 128x128 px with PIL bicubic" in report["protocol"]["sizes"]["resize"]


@pytest.mark.unit
def test_class_fidelity_needs_two_classes():
    """One slide, one case (the CMU-1 demo): balanced accuracy and chance are both 1; skipped, not shown."""
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least two classes"):
        class_fidelity(images, ["CMU-1"] * 6, images, ["CMU-1"] * 6, images, ["CMU-1"] * 6)
