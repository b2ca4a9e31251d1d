"""FD/KID with any encoder: closed-form Frechet distances, and the three loaders (timm, transformers,
open_clip) on small RANDOMLY INITIALISED models saved to folders (marked random_init.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histosynth.console import HistosynthError
from histosynth.evaluate import features as feat
from histosynth.evaluate.metrics import frechet_distance, frechet_distance_low_rank, gaussian_stats
from histosynth.evaluate.run import evaluate
from histosynth.imageio import save_png

from test_evaluate import make_workspace, tissue_tiles


def _mark_random(folder: Path) -> Path:
    (folder / feat.RANDOM_MARK).write_text("randomly initialised for tests: not a trained encoder\n")
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    """One tiny random model per loader, saved as each library saves a model."""
    import open_clip
    import timm
    from safetensors.torch import save_file
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("test_vit", pretrained=False), root / "timm_random")
    hf = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  patch_size=8, image_size=56))
    hf.save_pretrained(root / "dinov2_random")
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "dinov2_random")
    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    (root / "clip_random").mkdir()
    (root / "clip_random" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    save_file(open_clip.CLIP(**cfg).state_dict(), root / "clip_random" / "open_clip_model.safetensors")
    return {name: _mark_random(root / name) for name in ("timm_random", "dinov2_random", "clip_random")}


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    mu, sigma = gaussian_stats(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)
    assert frechet_distance_low_rank(mu, sigma, x) == pytest.approx(0, abs=1e-6 * np.trace(sigma))  # round-off only
    # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # Non-commuting: S1 = I gives tr(S2) + d - 2 tr sqrt(S2) whatever S2's eigenvectors.
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    s2 = q @ np.diag(b) @ q.T
    expected = np.sum((m1 - m2) ** 2) + 6 + b.sum() - 2 * np.sqrt(b).sum()
    assert frechet_distance(m1, np.eye(6), m2, s2) == pytest.approx(expected, rel=1e-10)
    # Sample estimates converge to the closed form (20000 draws of each Gaussian).
    y1 = rng.multivariate_normal(m1, np.diag(a), 20000)
    y2 = rng.multivariate_normal(m2, np.diag(b), 20000)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(*gaussian_stats(y1), *gaussian_stats(y2)) == pytest.approx(closed, rel=0.05)


def _library_forward(loader: str, folder: Path, images: np.ndarray) -> torch.Tensor:
    """Each library's own documented recipe, written out independently of histosynth."""
    from PIL import Image

    pil = [Image.fromarray(i) for i in images]
    with torch.no_grad():
        if loader == "timm":
            import timm

            model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # with its classifier
            transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
            return model.forward_head(model.forward_features(torch.stack([transform(p) for p in pil])), pre_logits=True)
        if loader == "transformers":
            from transformers import AutoImageProcessor, AutoModel

            model = AutoModel.from_pretrained(folder).eval()
            inputs = AutoImageProcessor.from_pretrained(folder)(images=pil, return_tensors="pt")
            return model(**inputs).last_hidden_state[:, 0]  # DINOv2: the (layer-normed) CLS token
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        return model.eval().encode_image(torch.stack([preprocess(p) for p in pil]))


@pytest.mark.parametrize("name,loader", [("timm_random", "timm"), ("dinov2_random", "transformers"),
                                         ("clip_random", "open_clip")])
def test_features_equal_the_libraries_forward(encoders, name, loader):
    images = tissue_tiles(3, seed=4)
    encoder = feat.load_encoder(name, str(encoders[name]))
    ours = encoder(images)
    assert encoder.info["loader"] == loader and encoder.info["random_weights"] is True
    assert len(encoder.info["weights_sha256"]) == 64 and encoder.info["preprocessing"]
    theirs = _library_forward(loader, encoders[name], images).numpy()
    assert ours.shape == theirs.shape and np.abs(theirs).mean() > 1e-4
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    mu, sigma = gaussian_stats(ours)  # FD(X, X) = 0 up to round-off (relative to the features' scale)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-6 * np.trace(sigma))


def test_bad_features_spec(tmp_path):
    with pytest.raises(HistosynthError, match="not an image encoder folder"):
        feat.load_encoder("x", str(tmp_path))
    with pytest.raises(HistosynthError, match="local Hugging Face cache"):
        feat.load_encoder("x", "hf-hub:nobody/no-such-model-here")
    with pytest.raises(HistosynthError, match="used twice"):
        feat.parse_features(["a=/x", "a=/y"])
    assert feat.parse_features(["inception", "/m/UNI-h", "dino=/m/x"]) == [("uni_h", "/m/UNI-h"), ("dino", "/m/x")]


def test_evaluate_reports_fd_and_kid_per_encoder(encoders, tmp_path):
    ws, tiles = make_workspace(tmp_path / "ws")
    for i, img in enumerate(tissue_tiles(8, seed=5)):
        save_png(tmp_path / "fake" / f"{i:05d}.png", img, {"synthetic": "true"})
    specs = [str(p) for p in encoders.values()]
    report = evaluate(f"{ws}:test", tmp_path / "fake", tmp_path / "eval", metrics=["fd"], features=specs)
    m, p = report["metrics"], report["protocol"]
    for name in encoders:
        assert m[f"FD_{name}"] > 0 and "kid" in m[f"KID_{name}"]
        assert m[f"KID_{name}"]["singular_covariance"] is True  # 8 fakes, >= 24-d features
        enc = p["encoders"][name]
        assert enc["random_weights"] is True and len(enc["weights_sha256"]) == 64 and "regularisation" in enc["covariance"]
    assert "randomly initialised" in (tmp_path / "eval" / "report.md").read_text()
    same = evaluate(f"{ws}:test", f"{ws}:test", tmp_path / "same", metrics=["fd"], features=specs[:1])
    scale = np.trace(np.cov(np.load(tmp_path / "same" / "fake_stats.npz")["feat_timm_random"], rowvar=False))
    assert same["metrics"]["FD_timm_random"] == pytest.approx(0, abs=1e-6 * scale)
