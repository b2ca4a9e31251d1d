"""The demo's HTML report: one self-contained file (images inlined as base64) plus the PNGs beside it.

`write_report(results, out_dir)` renders a plain dict, so the report can be tested without running
any stage. The dict's keys:

    title, preset, smoke (bool), data (str), device (str), total_wall_s (float)
    stages:   [{name, status ("ran" | "resumed"), wall_time_s, rss_peak_bytes, rss_peak_above_baseline_bytes}]
    metrics:  {"computed": {name: value}, "skipped": {name: reason}}
    images:   {"overview": png, "loss_curve": png, "prompts": [{"prompt": str, "image": png}]}
    conditioning (optional): {"grid": png, "explanation": str,
                              "rows": [{metric, generated, control, reference}] (quality.table_rows)}
    notes:    [str]
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fileio import write_text

SMOKE_NOTE = (
    "This is a smoke-scale model trained for a few minutes on a CPU: it shows that every stage runs "
    "end to end, not what the method can do. Do not judge image quality or metrics by it."
)


def mib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _img_tag(path: str | Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _metric_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(results: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(results.get('title', 'histosynth demo'))}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.warn{background:#fff3cd;padding:1em;border:1px solid #e0c36b}"
        "img{max-width:100%;image-rendering:pixelated}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top;max-width:320px}"
        "figcaption{font-size:0.85em;color:#444}</style></head><body>",
        f"<h1>{esc(results.get('title', 'histosynth demo'))}</h1>",
        f"<p>Preset <code>{esc(str(results.get('preset')))}</code>; data: {esc(str(results.get('data', '')))}; "
        f"device: {esc(str(results.get('device', 'cpu')))}; this run took {seconds(results.get('total_wall_s'))} "
        f"(CPU time {seconds(results.get('total_cpu_s'))}).</p>",
    ]
    if results.get("smoke"):
        parts.append(f"<p class='warn'><b>Smoke-scale CPU model.</b> {esc(results.get('smoke_note') or SMOKE_NOTE)}</p>")
    for note in results.get("notes", []):
        parts.append(f"<p>{esc(note)}</p>")

    parts += conditioning_html(results.get("conditioning"))
    images = results.get("images", {})
    if images.get("overview"):
        parts += ["<h2>Real vs generated</h2>", _img_tag(images["overview"], "real vs generated tiles")]
    if images.get("prompts"):
        parts.append("<h2>Samples per prompt</h2>")
        for item in images["prompts"]:
            parts.append(f"<figure>{_img_tag(item['image'], item['prompt'])}"
                         f"<figcaption>{esc(item['prompt'])}</figcaption></figure>")
    if images.get("loss_curve"):
        parts += ["<h2>Training loss</h2>", _img_tag(images["loss_curve"], "training loss curve")]

    metrics = results.get("metrics", {})
    parts.append("<h2>Metrics</h2>")
    computed, skipped = metrics.get("computed", {}), metrics.get("skipped", {})
    if computed:
        parts.append("<table><tr><th>metric</th><th>value</th></tr>")
        parts += [f"<tr><td>{esc(k)}</td><td>{_metric_value(v)}</td></tr>" for k, v in computed.items()]
        parts.append("</table>")
    else:
        parts.append("<p>No metric was computed.</p>")
    if skipped:
        by_reason: dict[str, list[str]] = {}  # FID, KID and PR usually share one reason
        for name, reason in skipped.items():
            by_reason.setdefault(str(reason), []).append(name)
        parts.append("<p>Skipped:</p><ul>")
        parts += [f"<li><b>{esc(', '.join(names))}</b>: {esc(reason)}</li>" for reason, names in by_reason.items()]
        parts.append("</ul>")

    parts += [
        "<h2>Stages</h2>",
        "<p>Wall time, CPU time (all threads of the process) and peak resident memory of each stage, measured "
        "around the call in the demo's process; 'above start' is what the stage added to the memory already in use. "
        "'resumed' stages were finished by an earlier run and show that run's figures.</p>",
        "<table><tr><th>stage</th><th>status</th><th>wall time</th><th>CPU time</th><th>peak RSS</th>"
        "<th>peak above start</th></tr>",
    ]
    for s in results.get("stages", []):
        parts.append(
            f"<tr><td>{esc(s['name'])}</td><td>{esc(s.get('status', ''))}</td><td>{seconds(s.get('wall_time_s'))}</td>"
            f"<td>{seconds(s.get('cpu_time_s'))}</td><td>{mib(s.get('rss_peak_bytes'))}</td>"
            f"<td>{mib(s.get('rss_peak_above_baseline_bytes'))}</td></tr>"
        )
    parts += ["</table>", "</body></html>"]
    return "\n".join(parts)


def conditioning_html(cond: dict | None) -> list[str]:
    """The conditioning at work: real vs generated per requested condition, fidelity with its control."""
    if not cond:
        return []
    esc = html.escape
    parts = ["<h2>Conditioning at work</h2>", f"<p>{esc(cond.get('explanation', ''))}</p>"]
    if cond.get("grid"):
        parts.append(_img_tag(cond["grid"], "real vs generated tiles per requested condition"))
    rows = cond.get("rows") or []
    if rows:
        parts.append("<table><tr><th>metric</th><th>generated [95% CI]</th><th>control [95% CI]</th>"
                     "<th>reference</th></tr>")
        parts += [f"<tr><td>{esc(r['metric'])}</td><td>{esc(r['generated'])}</td><td>{esc(r['control'])}</td>"
                  f"<td>{esc(r['reference'])}</td></tr>" for r in rows]
        parts.append("</table>")
    return parts


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "index.html"
    write_text(path, render_html(results))
    return path


# ---- figures ----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(loss_csv: str | Path, png: str | Path) -> Path:
    """Raw loss per logged step and a moving average, on a log scale."""
    import pandas as pd

    plt = _pyplot()
    df = pd.read_csv(loss_csv)
    step = df["step"] if "step" in df else np.arange(len(df))
    window = max(1, len(df) // 20)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(step, df["loss"], alpha=0.35, lw=1, label="loss")
    ax.plot(step, df["loss"].rolling(window, min_periods=1).mean(), lw=2, label=f"moving mean ({window})")
    ax.set(xlabel="step", ylabel="diffusion loss (MSE)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def overview_png(real: Sequence[np.ndarray], fake: Sequence[np.ndarray], png: str | Path,
                 columns: int = 8, fake_title: str = "generated") -> Path:
    """Side by side: real test tiles and generated tiles, each as a contact sheet (the README's picture)."""
    from ..imageio import contact_sheet

    plt = _pyplot()
    sheets = [contact_sheet(list(images), columns=columns) for images in (real, fake)]
    height, width = sheets[0].shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5 * height / width + 0.5))
    for ax, sheet, title in zip(axes, sheets, ("real (test split)", fake_title)):
        ax.imshow(sheet, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def condition_grid_png(rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]], png: str | Path,
                       per_side: int = 6, title: str | None = None) -> Path:
    """One row per condition: real tiles of that condition (left) beside images generated from its
    text (right), so a reader sees whether the text steers the images. rows: (label, real, fake)."""
    from ..imageio import contact_sheet

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 1.2 * len(rows) + (0.5 if title else 0.2)), squeeze=False)
    for r, (label, real, fake) in enumerate(rows):
        for c, (images, side) in enumerate(((real, "real"), (fake, f"generated ({len(fake)} images)"))):
            ax = axes[r, c]
            ax.axis("off")
            shown = list(images)[:per_side]
            if shown:
                ax.imshow(contact_sheet(shown, columns=per_side), interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{label}: {side}", fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
