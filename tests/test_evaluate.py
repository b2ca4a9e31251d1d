"""Evaluate stage: pytorch-fid parity of features and Frechet distance, KID/PR, stain, memorization, eval.json."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from histosynth.console import HistosynthError
from histosynth.evaluate import inception as inc
from histosynth.evaluate.metrics import frechet_distance, frechet_distance_low_rank, gaussian_stats, kid, precision_recall
from histosynth.evaluate.run import evaluate
from histosynth.imageio import save_png

TILE = 48


def tissue_tiles(count: int, seed: int) -> np.ndarray:
    """Real IHC tissue crops (scikit-image's immunohistochemistry picture), uint8 [count, TILE, TILE, 3]."""
    from skimage import data

    image = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, image.shape[0] - TILE, count)
    xs = rng.integers(0, image.shape[1] - TILE, count)
    return np.stack([image[y:y + TILE, x:x + TILE] for y, x in zip(ys, xs)])


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory) -> Path:
    """A randomly initialised FID Inception saved like the real weights file (NOT the real weights)."""
    torch.manual_seed(0)
    net = inc.build_fid_inception()
    for module in net.modules():  # variance-preserving init keeps activations O(1) through 20 layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path


def pytorch_fid_model(weights: Path):
    """pytorch-fid's own InceptionV3, with its download replaced by our file."""
    from pytorch_fid.inception import InceptionV3

    state = torch.load(weights, weights_only=True)
    with mock.patch("pytorch_fid.inception.load_state_dict_from_url", return_value=state):
        return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def test_features_match_pytorch_fid(random_inception):
    ours, info = inc.load_inception(random_inception, allow_unverified=True)
    assert info["verified"] is False and "bilinear" in info["resize"]
    x = torch.from_numpy(tissue_tiles(4, seed=1)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        theirs = pytorch_fid_model(random_inception)(x)[0].flatten(1)
        mine = ours(x)
    assert mine.shape == (4, 2048)
    assert mine.abs().mean() > 1e-3  # not a degenerate all-zero comparison
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.unit
@pytest.mark.parametrize("n", [12, 500])  # singular (n < d) and full-rank covariances
def test_frechet_distance_matches_pytorch_fid(n):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(n)
    a = rng.gamma(2.0, size=(n, 64))  # non-negative and skewed, like pool3 features
    b = rng.gamma(2.2, size=(n, 64)) + 0.05
    ours = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    ref = calculate_frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_low_rank(*gaussian_stats(a), b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(*gaussian_stats(a), *gaussian_stats(a)) == pytest.approx(0, abs=1e-6 * ref)


@pytest.mark.unit
def test_kid_and_precision_recall_separate_distributions():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 32))
    same = rng.normal(size=(200, 32))
    shifted = rng.normal(size=(200, 32)) + 0.5
    assert kid(real[:60], same, subsets=5)["subset_size"] == 60  # adapts to the smaller set
    near, far = kid(real, same, subset_size=100, subsets=50), kid(real, shifted, subset_size=100, subsets=50)
    assert abs(near["kid"]) < 0.1 * far["kid"] and far["kid"] > 5 * far["kid_std"]
    assert precision_recall(real, real)["precision"] == 1.0
    assert precision_recall(real, shifted)["precision"] < precision_recall(real, same)["precision"]


def test_weights_checked_by_hash(random_inception, tmp_path, monkeypatch):
    with pytest.raises(HistosynthError, match="sha256"):
        inc.load_inception(random_inception)
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(inc.InceptionWeightsMissing, match="pt_inception-2015-12-05-6726825d.pth"):
        inc.load_inception(None)
    monkeypatch.setenv(inc.ENV_VAR, str(random_inception))
    assert inc.find_weights() == random_inception


def make_workspace(root: Path) -> tuple[Path, np.ndarray]:
    """Tiles of two cases in one HDF5 file plus the index: case A train, case B test."""
    import h5py
    import pandas as pd

    tiles = tissue_tiles(24, seed=2)
    (root / "tiles" / "slides").mkdir(parents=True)
    with h5py.File(root / "tiles" / "slides" / "s1.h5", "w") as f:
        f["imgs"] = tiles
    split = ["train"] * 14 + ["test"] * 10
    pd.DataFrame({
        "tile_id": np.arange(24, dtype=np.int64), "case_id": ["A"] * 14 + ["B"] * 10, "split": split,
        "file": "tiles/slides/s1.h5", "row": np.arange(24), "slide_id": "s1",
    }).to_parquet(root / "tiles" / "index.parquet")
    return root, tiles


def fake_folder(folder: Path, train_tiles: np.ndarray) -> Path:
    """Eight 'generated' images: two exact copies of training tiles, six new crops."""
    fakes = list(train_tiles[:2]) + list(tissue_tiles(6, seed=3))
    for i, img in enumerate(fakes):
        save_png(folder / f"{i:05d}.png", img, {"synthetic": "true"})
    return folder


def test_evaluate_workspace_split(random_inception, tmp_path):
    ws, tiles = make_workspace(tmp_path / "ws")
    fakes = fake_folder(tmp_path / "fake", tiles[:14])
    out = tmp_path / "eval"
    report = evaluate(f"{ws}:test", fakes, out, inception_weights=random_inception,
                      allow_unverified_weights=True, batch_size=8)
    m = report["metrics"]
    # Weight-free metrics that need descriptors or labels say why they skip; C2ST always runs.
    assert set(report["skipped"]) <= {"fidelity", "descriptors", "classes"}
    assert 0 <= m["c2st"]["generated"]["auroc"] <= 1 and m["c2st"]["real_reference"]["n_per_side"] == 10
    assert m["c2st"]["memorization_near_copy_share"] == m["memorization"]["near_copy_share"]
    # the reference set, cached (its name lists its parts: with histosynth.slides.descriptors, descriptors too)
    assert list((ws / "eval-cache").glob("stats-train-nall-cropnone-*small*.npz"))
    assert m["fid"] > 0 and "kid" in m["kid"] and 0 <= m["pr"]["precision"] <= 1
    assert m["stain"]["w1_h"] >= 0 and np.isfinite(m["stain"]["frechet_hed"])
    assert m["memorization"]["near_copies"] >= 2  # the two copied training tiles are found
    assert m["memorization"]["n_train"] == 14
    p = report["protocol"]
    assert (p["n_real"], p["n_fake"]) == (10, 8)
    assert "bilinear" in p["resize"] and p["inception"]["verified"] is False
    assert "pytorch-fid" in p["versions"]
    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"]["fid"] == pytest.approx(m["fid"])
    md = (out / "report.md").read_text()
    assert "| FID" in md and "real_grid.png" in md and "nearest_training.png" in md
    assert all((out / f).exists() for f in ("real_grid.png", "fake_grid.png", "nearest_training.png", "manifest.json"))
    cached = ws / "eval-cache" / "stats-test-nall-cropnone.npz"
    assert cached.exists()

    # The cached real statistics are reused, and reusable directly as REAL.
    again = evaluate(f"{ws}:test", fakes, tmp_path / "eval2", metrics=["fid", "stain"],
                     inception_weights=random_inception, allow_unverified_weights=True)
    assert again["protocol"]["real"]["reused"] is True
    # An older histosynth's cache (no status record): the file's own meta decides once, then the record.
    from histosynth.status import WorkLog

    (ws / "eval-cache" / "status.json").unlink()
    before = cached.stat().st_mtime_ns
    older = evaluate(f"{ws}:test", fakes, tmp_path / "eval5", metrics=["fid", "stain"],
                     inception_weights=random_inception, allow_unverified_weights=True)
    assert older["protocol"]["real"]["reused"] is True and cached.stat().st_mtime_ns == before
    assert WorkLog(ws / "eval-cache" / "status.json").get(cached.name).state == "done"
    c2st_only = evaluate(f"{ws}:test", fakes, tmp_path / "eval4", metrics=["c2st"])  # reuses the cached reference
    assert c2st_only["metrics"]["c2st"]["real_reference"] == m["c2st"]["real_reference"]
    assert again["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-9)
    from_npz = evaluate(cached, out / "fake_stats.npz", tmp_path / "eval3", metrics=["fid", "kid"],
                        inception_weights=random_inception, allow_unverified_weights=True)
    assert from_npz["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-9)


def test_without_weights(tmp_path, monkeypatch):
    ws, tiles = make_workspace(tmp_path / "ws")
    fakes = fake_folder(tmp_path / "fake", tiles[:14])
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(inc.InceptionWeightsMissing, match="--inception-weights"):
        evaluate(f"{ws}:test", fakes, tmp_path / "only-fid", metrics=["fid"])
    # Other metrics asked for too: FID/KID/PR are skipped with the message, the rest is computed.
    report = evaluate(f"{ws}:test", fakes, tmp_path / "eval")
    assert {"fid", "kid", "pr"} <= set(report["skipped"]) <= {"fid", "kid", "pr", "fidelity", "descriptors", "classes"}
    assert "HISTOSYNTH_INCEPTION" in report["skipped"]["fid"]
    assert report["metrics"]["memorization"]["near_copies"] >= 2


def test_pytorch_fid_stats_file_as_real(random_inception, tmp_path):
    """A pytorch-fid `--save-stats` file (mu, sigma only) works for FID; other metrics say why they skip."""
    _, tiles = make_workspace(tmp_path / "ws")
    fakes = fake_folder(tmp_path / "fake", tiles[:14])
    feats = np.random.default_rng(0).normal(size=(20, 2048))
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    report = evaluate(tmp_path / "ref.npz", fakes, tmp_path / "eval", metrics=["fid", "kid", "stain"],
                      inception_weights=random_inception, allow_unverified_weights=True)
    assert np.isfinite(report["metrics"]["fid"])
    assert "inception" in report["skipped"]["kid"] and "hed_stats" in report["skipped"]["stain"]


def test_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from histosynth.cli import app

    ws, tiles = make_workspace(tmp_path / "ws")
    fakes = fake_folder(tmp_path / "fake", tiles[:14])
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    result = CliRunner().invoke(app, ["evaluate", "--real", f"{ws}:test", "--fake", str(fakes),
                                      "--metrics", "stain,memorization", "--crop", "32"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fake-eval" / "eval.json").read_text())
    assert set(report["metrics"]) == {"stain", "memorization"} and "32x32" in report["protocol"]["crop"]
    result = CliRunner().invoke(app, ["evaluate", "--real", f"{ws}:test", "--fake", str(fakes), "--metrics", "fid"])
    assert result.exit_code != 0 and isinstance(result.exception, inc.InceptionWeightsMissing)


def test_cli_command_style(tmp_path, monkeypatch):
    """evaluate takes --workspace/--preset/--config/--set like every command; the real set is a split."""
    from typer.testing import CliRunner

    from histosynth.cli import app

    ws, tiles = make_workspace(tmp_path / "ws")
    fakes = fake_folder(tmp_path / "fake", tiles[:14])
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    run = CliRunner().invoke
    result = run(app, ["evaluate", "-w", str(ws), "--real-split", "test", "--fake", str(fakes),
                       "--set", "evaluate.metrics=[stain,memorization]", "--out", str(tmp_path / "e1")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e1" / "eval.json").read_text())
    assert set(report["metrics"]) == {"stain", "memorization"} and report["protocol"]["real"]["source"].endswith(":test")
    assert report["protocol"]["sizes"]["real"] == [TILE, TILE]
    result = run(app, ["evaluate", "-w", str(ws), "--fake", str(fakes), "--set", "evaluate.crop=8",
                       "--out", str(tmp_path / "e2")])
    from histosynth.config import ConfigError  # main() turns it into one line and exit 2

    assert isinstance(result.exception, ConfigError) and "evaluate.crop" in str(result.exception)
    assert not (tmp_path / "e2").exists()
    for args, message in ((["-w", str(ws), "--real", str(fakes)], "not both"), ([], "name the real set"),
                          (["--real", str(fakes), "--set", "evaluate.n=3"], "need --workspace"),
                          (["-w", str(ws), "--real-split", "val"], "--real-split val"),
                          (["-w", str(ws), "--resize", "up"], "--resize up"),
                          (["-w", str(ws), "--metrics", "fid,nope"], "--metrics: unknown nope")):
        result = run(app, ["evaluate", "--fake", str(fakes), *args, "--out", str(tmp_path / "e3")])
        assert result.exit_code != 0 and message in str(result.exception), (args, result.output)
        assert result.exception.exit_code == 2  # main() exits with it, as for an invalid --set
        assert not (tmp_path / "e3").exists()
