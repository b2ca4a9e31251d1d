"""The evaluation report: `report.md` with the metrics table, the protocol and real-vs-generated grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import write_text
from ..imageio import contact_sheet, save_png

ROWS = (  # (metric path in eval.json, label, better)
    ("fid", "FID (pytorch-fid Inception, pool3)", "lower"),
    ("kid.kid", "KID", "lower"),
    ("kid.kid_std", "KID std over subsets", ""),
    ("pr.precision", "Precision (k-NN, k=3)", "higher"),
    ("pr.recall", "Recall (k-NN, k=3)", "higher"),
    ("stain.frechet_hed", "Stain Frechet distance (HED mean/std per image)", "lower"),
    ("stain.w1_h", "Haematoxylin W1 (pixels)", "lower"),
    ("stain.w1_e", "Eosin W1 (pixels)", "lower"),
    ("memorization.near_copy_share", "Share of near-copies of training tiles", "lower"),
    ("memorization.fake_nn_distance_median", "Median distance fake -> nearest training tile", ""),
    ("memorization.test_nn_distance_median", "Median distance real test -> nearest training tile", ""),
)
PAIRS = 8   # closest fake/training pairs shown


def lookup(data: dict, path: str):
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def write_grids(out_dir: Path, real_preview: np.ndarray, fake_preview: np.ndarray,
                pairs: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, str]:
    """real_grid.png, fake_grid.png and (with pairs) nearest_training.png: fake beside its nearest tile."""
    files = {}
    for name, preview, synthetic in (("real_grid.png", real_preview, False), ("fake_grid.png", fake_preview, True)):
        if len(preview):
            save_png(out_dir / name, contact_sheet(list(preview), columns=8), {"synthetic": str(synthetic).lower()})
            files[name.removesuffix(".png")] = name
    if pairs:
        size = pairs[0][0].shape[:2]
        images = [img for fake, train in pairs for img in (fake, _resize(train, size))]
        save_png(out_dir / "nearest_training.png", contact_sheet(images, columns=2), {"synthetic": "mixed"})
        files["nearest_training"] = "nearest_training.png"
    return files


def write_markdown(out_dir: Path, report: dict, grids: dict[str, str]) -> Path:
    protocol = report["protocol"]
    lines = ["# histosynth evaluation", "",
             f"Real: `{protocol['real']['source']}` ({protocol['n_real']} images); "
             f"generated: `{protocol['fake']['source']}` ({protocol['n_fake']} images).", "",
             "| metric | value | better |", "|---|---|---|"]
    for path, label, better in ROWS:
        value = lookup(report["metrics"], path)
        if value is not None:
            lines.append(f"| {label} | {value:.4g} | {better} |")
    for key, value in report["metrics"].items():
        if key.startswith("FD_"):
            lines.append(f"| Frechet distance, {key[3:]} features | {value:.4g} | lower |")
        elif key.startswith("KID_"):
            lines.append(f"| KID, {key[4:]} features | {value['kid']:.4g} (std {value['kid_std']:.2g}) | lower |")
    lines += weight_free_rows(report["metrics"])
    for metric, why in report.get("skipped", {}).items():
        lines.append(f"| {metric} | skipped: {why} | |")
    inception = protocol.get("inception") or {}
    if inception and not inception.get("verified"):
        lines += ["", "**The Inception weights are not the standard FID file: FID, KID and precision/recall "
                      "here are not comparable with any published number.**"]
    for name, enc in (protocol.get("encoders") or {}).items():
        random = " **randomly initialised weights (a test model): its FD/KID mean nothing**" if enc.get("random_weights") else ""
        lines += ["", f"- Encoder `{name}`: {enc.get('loader')} {enc.get('architecture')} from `{enc.get('spec')}`, "
                      f"weights sha256 {enc.get('weights_sha256', '')[:16]}...{random}"]
    cond = protocol.get("fakes_conditioned_on") or {}
    lines += ["", "## Protocol", "",
              f"- Fakes conditioned on: {cond.get('description', 'unknown')}",
              f"- Crop: {protocol['crop']}; resizing for Inception: {protocol['resize']}",
              f"- Inception weights: {inception.get('sha256', 'not used')}",
              f"- Seeds: {protocol['seeds']}",
              "- Implementations: " + "; ".join(f"{k}: {v}" for k, v in protocol["implementations"].items()),
              "", "Small sets make FID biased upwards; compare FIDs only at equal image counts (KID is unbiased).", ""]
    for key, title in (("real_grid", "Real tiles"), ("fake_grid", "Generated images"),
                       ("nearest_training", "Closest generated images (left) and their nearest training tile (right)")):
        if key in grids:
            lines += [f"## {title}", "", f"![{title}]({grids[key]})", ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def _ci(block: dict | None, value: str, ci: str) -> str:
    if not block or block.get(value) is None:
        return "-"
    lo, hi = block.get(ci) or (float("nan"), float("nan"))
    return f"{block[value]:.3g} [{lo:.3g}, {hi:.3g}]"


def weight_free_rows(metrics: dict) -> list[str]:
    """Rows 'metric | generated (95% CI) | real-vs-real reference / control'; each block's near-copy share."""
    rows = []
    if "c2st" in metrics:
        c = metrics["c2st"]
        rows.append(f"| C2ST AUROC, real test vs generated (0.5 = indistinguishable) | "
                    f"{_ci(c['generated'], 'auroc', 'ci95')} | reference real vs real: "
                    f"{_ci(c.get('real_reference'), 'auroc', 'ci95')} |")
    for name, d in (metrics.get("descriptors") or {}).get("generated", {}).items():
        ref = ((metrics["descriptors"].get("real_reference") or {}).get(name) or {}).get("w1")
        rows.append(f"| Descriptor W1, {name} | {d['w1']:.4g} | reference real vs real: "
                    f"{'-' if ref is None else format(ref, '.4g')} |")
    for name, f in (metrics.get("fidelity") or {}).get("generated", {}).items():
        ref = (metrics["fidelity"].get("real_reference") or {}).get(name)
        rows.append(f"| Fidelity Spearman, {name} vs requested bin | {_ci(f, 'spearman', 'spearman_ci95')} | "
                    f"shuffled control {_ci(f['shuffled_control'], 'spearman', 'spearman_ci95')}; "
                    f"real maximum {_ci(ref, 'spearman', 'spearman_ci95')} |")
        rows.append(f"| Fidelity bin accuracy, {name} | {_ci(f, 'bin_accuracy', 'bin_accuracy_ci95')} | "
                    f"chance {f['chance_bin_accuracy']:.3g} |")
    if "classes" in metrics:
        c = metrics["classes"]
        rows.append(f"| Class fidelity (balanced accuracy, requested class) | {_ci(c['generated'], 'balanced_accuracy', 'ci95')} | "
                    f"real held-out ceiling {_ci(c['real_heldout_ceiling'], 'balanced_accuracy', 'ci95')}; "
                    f"shuffled control {_ci(c['shuffled_control'], 'balanced_accuracy', 'ci95')}; chance {c['chance']:.3g} |")
        rows.append(f"| Train on synthetic, test on real (balanced accuracy) | "
                    f"{_ci(c['train_on_synthetic_test_on_real'], 'balanced_accuracy', 'ci95')} | train on real: "
                    f"{_ci(c['train_on_real_test_on_real'], 'balanced_accuracy', 'ci95')} |")
    share = next((b.get("memorization_near_copy_share") for b in metrics.values()
                  if isinstance(b, dict) and "memorization_near_copy_share" in b), None)
    if rows and share is not None:
        rows.append(f"| Near-copy share beside these figures | {share:.3g} | |")
    return rows


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
