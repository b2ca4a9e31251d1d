"""The Gradio app of `histosynth serve`: Generate, Browse (with a workspace) and Run tabs.

Everything the page loads comes from this server: gradio's bundled fonts (no Google Fonts), no
analytics, no share link, no SSR node server. Generated PNGs are written to a private temporary
folder and handed to gradio, which serves them from its own cache; files of the run and the
workspace are never served by URL (gradio's `blocked_paths` plus the `Refusal` guard in front).
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from .. import __version__
from ..console import HistosynthError
from . import backend
from .records import RunRecords, WorkspaceTexts

DISPLAY_PX = 192   # tiles are shown at this edge (nearest-neighbour, so pixels stay pixels)

CSS = """
.gradio-container {max-width: 1400px !important}
.tile img, .tile canvas, .grid img {image-rendering: pixelated}
#hs-header {border-bottom: 1px solid var(--border-color-primary); padding-bottom: 6px}
#hs-header h1 {font-size: 1.35rem; margin: 0}
.prose table {font-size: 0.88rem} .prose td, .prose th {padding: 3px 8px !important}
.hs-banner {background: #fff4e5; border-left: 4px solid #d9822b; padding: 6px 10px; font-size: 0.9rem}
.hs-verdict {font-size: 0.92rem}
.hs-count-ok {color: #1f6f43} .hs-count-over {color: #b42318; font-weight: 600}
footer {display: none !important}
"""


def theme():
    # System fonts only: a GoogleFont would make every page load fetch fonts.googleapis.com.
    return gr.themes.Default(primary_hue="purple", secondary_hue="pink", neutral_hue="gray",
                          font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"],
                          radius_size="sm", spacing_size="sm")


class AppState:
    """The loaded run (and workspace); shared by every request, used one request at a time."""

    def __init__(self, run_dir: Path, workspace: Path | None, out_dir: Path):
        self.run_dir, self.workspace, self.out_dir = run_dir, workspace, out_dir
        self.settings = backend.text_settings(run_dir)
        self.tokenizer = backend.run_tokenizer(run_dir, self.settings)
        self.limit = backend.token_limit(self.settings)
        self.pipe = backend.load_pipeline(run_dir)
        self.tile_px = backend.tile_size(self.pipe)
        self.records = RunRecords(run_dir)
        self.budget = self.settings.budget or self.records.manifest().get("results", {}).get("budget")
        self.nearest = backend.NearestTiles(workspace) if workspace else None
        self.texts = WorkspaceTexts(workspace, self.budget) if workspace else None

    def count(self, text: str) -> int:
        return self.tokenizer.count(text)


# ---- Generate ---------------------------------------------------------------------------------
def count_html(state: AppState, text: str) -> str:
    n = state.count(text or "")
    cls = "hs-count-over" if n > state.limit else "hs-count-ok"
    note = (f"over the limit: shorten it by {n - state.limit}; nothing is cut off for you" if n > state.limit
            else "fits")
    budget = f"; summaries were trained at ≤ {state.budget} tokens" if state.budget else ""
    return (f"<span class='{cls}' id='hs-token-count'>{n} / {state.limit} tokens ({html.escape(state.tokenizer.name)}"
            f" tokenizer) — {note}</span><small>{budget}</small>")


def enlarged(image: np.ndarray | None, edge: int = DISPLAY_PX) -> np.ndarray | None:
    """A display copy scaled by a whole factor with nearest neighbours (the download keeps the original)."""
    if image is None:
        return None
    factor = max(1, edge // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def verdict_md(v: backend.Verdict | None, case: str | None = None) -> str:
    if v is None:
        return "*No workspace given (`--workspace`): nearest training tile not searched.*"
    if v.tile_id is None:
        return f"*{v.note}*"
    label = "**NEAR-COPY of a training tile**" if v.near_copy else "**Not a near-copy**"
    where = f" (case {case})" if case else ""
    return (f"{label}\n\nNearest training tile **{v.tile_id}**{where} at distance {v.distance:.3f} "
            f"(near-copy below {v.threshold:.3f}: {v.note}).")


def run_generate(state: AppState, prompt, sampler, steps, guidance, seed, n, height, width, progress):
    prompt = (prompt or "").strip()
    tokens = state.count(prompt)
    if tokens > state.limit:
        raise gr.Error(f"The prompt has {tokens} tokens; this run reads at most {state.limit}. "
                       "Shorten it: it is not truncated, and nothing was generated.")
    request = backend.Request(prompt=prompt, sampler=sampler, steps=int(steps), guidance=float(guidance),
                              seed=int(seed), n=int(n), height=int(height), width=int(width))
    try:
        backend.set_sampler(state.pipe, state.run_dir, sampler)
        images = backend.generate(state.pipe, request,
                                  progress=lambda it: progress.tqdm(it, desc=f"denoising {request.n} image(s)"))
    except HistosynthError as exc:
        raise gr.Error(str(exc)) from None
    folder = Path(tempfile.mkdtemp(dir=state.out_dir))
    files = [backend.write_png(folder, img, request, i, state.pipe, state.run_dir) for i, img in enumerate(images)]
    verdicts = state.nearest.check(images, state.tile_px) if state.nearest else [None] * len(images)
    grid = [(str(f), f"seed {request.seed + i}") for i, f in enumerate(files)]
    slots = []
    for i in range(backend.MAX_IMAGES):
        if i < len(files):
            v = verdicts[i]
            found = v is not None and v.tile_id is not None
            near = state.nearest.tile(v.tile_id) if found else None
            case = state.texts.case_of(v.tile_id) if found and state.texts else None
            slots += [gr.Row(visible=True), enlarged(images[i]), enlarged(near),
                      f"**Seed {request.seed + i}** · {request.width}×{request.height} px\n\n" + verdict_md(v, case),
                      gr.DownloadButton(value=str(files[i]), label=f"Download PNG (seed {request.seed + i})",
                                        visible=True)]
        else:
            slots += [gr.Row(visible=False), None, None, "", gr.DownloadButton(value=None, visible=False)]
    status = (f"{len(files)} image(s), {sampler}, {steps} steps, guidance {guidance:g}, seeds "
              f"{request.seed}–{request.seed + len(files) - 1}. Each PNG records prompt, seed and checkpoint.")
    return [grid, status, *slots]


def generate_tab(state: AppState) -> None:
    s, defaults = state.settings, state.pipe.defaults
    fields = backend.template_fields(s)
    with gr.Row():
        with gr.Column(scale=2, min_width=360):
            prompt = gr.Textbox(label="Condition text (the run's template filled, or free text)", lines=4,
                                placeholder="e.g. invasive ductal carcinoma, grade 3.", elem_id="hs-prompt")
            count = gr.HTML(count_html(state, ""), elem_id="hs-count")
            with gr.Accordion("Prompt builder", open=True):
                gr.Markdown(f"Template of this run: `{s.template}` · levels: {', '.join(s.levels)}")
                htype = gr.Dropdown(list(backend.HISTOLOGIC_TYPES), label="Histologic type", allow_custom_value=True,
                                    value=backend.HISTOLOGIC_TYPES[0])
                grade = gr.Radio([(g or "not stated", g) for g in backend.GRADES], value="grade 2",
                                 label="Nottingham grade")
                level_inputs = [gr.Radio(list(backend.field_levels(s, f)), value=backend.field_levels(s, f)[0],
                                         label=f"{f} (binned)") for f in fields]
                notes = gr.Textbox(label="Further findings (optional)", lines=1)
                build = gr.Button("Fill the template", size="sm")
                if state.texts is not None and state.texts.summaries:
                    cases = gr.Dropdown([f"{c} ({state.texts.split_of(c)})" for c in state.texts.summaries],
                                        label="…or start from a case's report summary (test cases are unseen)",
                                        value=None)
                    cases.change(lambda c, *lv: backend.fill_template(
                        s, state.texts.summaries.get((c or "").split(" (")[0], ""), dict(zip(fields, lv))),
                        [cases, *level_inputs], prompt, queue=False)
            with gr.Row():
                sampler = gr.Radio(["ddim", "dpmpp"], value=defaults.sampler, label="Sampler")
                seed = gr.Number(value=defaults.seed, precision=0, label="Seed (image i: seed + i)", minimum=0)
            steps = gr.Slider(1, 200, value=defaults.steps, step=1, label="Steps")
            guidance = gr.Slider(1.0, 10.0, value=max(defaults.guidance, 1.0), step=0.05,
                                 label="Guidance (1 = none)")
            n = gr.Slider(1, backend.MAX_IMAGES, value=4, step=1, label="Images")
            big = backend.supports_size(state.pipe)
            px = state.tile_px
            with gr.Row():
                if big:
                    height = gr.Slider(px, px * 8, value=px, step=px, label="Height (px)")
                    width = gr.Slider(px, px * 8, value=px, step=px, label="Width (px)")
                else:  # the run's pipeline makes single tiles only
                    height = gr.Number(px, precision=0, interactive=False, label="Height (px, one tile)")
                    width = gr.Number(px, precision=0, interactive=False, label="Width (px, one tile)")
            go = gr.Button("Generate", variant="primary", elem_id="hs-generate")
        with gr.Column(scale=3):
            grid = gr.Gallery(label="Generated (synthetic)", columns=4, height=175, object_fit="contain",
                              elem_id="hs-grid", elem_classes=["grid"], format="png")
            status = gr.Markdown(elem_id="hs-status")
            gr.Markdown("**Each image beside its nearest training tile**")
            slot_outputs = []
            for i in range(backend.MAX_IMAGES):
                with gr.Row(visible=False, equal_height=True) as row:
                    gen = gr.Image(label=f"Generated #{i + 1}", height=DISPLAY_PX, interactive=False,
                                   elem_classes=["tile"], format="png")
                    near = gr.Image(label="Nearest training tile", height=DISPLAY_PX, interactive=False,
                                    elem_classes=["tile"])
                    with gr.Column():
                        verdict = gr.Markdown(elem_classes=["hs-verdict"])
                        download = gr.DownloadButton("Download PNG", visible=False, elem_id=f"hs-download-{i}",
                                                     size="sm", variant="secondary")
                slot_outputs += [row, gen, near, verdict, download]

    prompt.change(lambda t: count_html(state, t), prompt, count, queue=False, show_progress="hidden")
    build.click(lambda *a: backend.build_prompt(s, a[0], a[1], dict(zip(fields, a[3:])), a[2]),
                [htype, grade, notes, *level_inputs], prompt, queue=False)

    def on_generate(p, smp, st, g, sd, k, h, w, progress=gr.Progress()):
        return run_generate(state, p, smp, st, g, sd, k, h, w, progress)

    go.click(on_generate, [prompt, sampler, steps, guidance, seed, n, height, width],
             [grid, status, *slot_outputs], concurrency_limit=1, concurrency_id="gpu")


# ---- Browse -----------------------------------------------------------------------------------
def browse_tab(state: AppState):
    texts = state.texts
    with gr.Row():
        case = gr.Dropdown(["(all cases)", *texts.cases()], value="(all cases)", label="Case")
        split = gr.Radio(["all", "train", "test"], value="all", label="Split")
    tiles = gr.Gallery(label="Real tiles (click one)", columns=10, height=300, object_fit="contain",
                       elem_classes=["grid"], allow_preview=False, elem_id="hs-tiles")
    shown = gr.State([])
    with gr.Row(equal_height=True):
        tile = gr.Image(label="Tile", height=DISPLAY_PX, interactive=False, elem_classes=["tile"])
        report = gr.Textbox(label="Report", lines=12, interactive=False, elem_id="hs-report")
        summary = gr.Textbox(label=f"Summary (budget {state.budget})", lines=12, interactive=False)
    info = gr.Markdown(elem_id="hs-tile-info")

    def refresh(c, sp):
        rows = texts.filter(None if c == "(all cases)" else c, sp)
        images = texts.tiles(rows["tile_id"].tolist())
        gallery = [(img, f"{r.tile_id} · {r.case_id} · {r.split}") for img, r in zip(images, rows.itertuples())]
        return gallery, rows[["tile_id", "case_id", "split"]].to_dict("records"), f"{len(rows)} tile(s) shown"

    def pick(rows, evt: gr.SelectData):
        r = rows[evt.index]
        rep, summ = texts.texts(r["case_id"])
        return (enlarged(texts.tiles([r["tile_id"]])[0]), rep, summ,
                f"Tile {r['tile_id']} · case {r['case_id']} · {r['split']} split")

    for control in (case, split):
        control.change(refresh, [case, split], [tiles, shown, info])
    tiles.select(pick, shown, [tile, report, summary, info])
    return refresh, [case, split], [tiles, shown, info]


# ---- Run --------------------------------------------------------------------------------------
def metrics_md(state: AppState) -> str:
    scores, where = state.records.metrics()
    if scores is None:
        return "No `eval.json` in this run yet: run `histosynth evaluate --out RUN/eval ...` to add metrics."
    lines = [f"**Metrics** from `{where}`", "", "| metric | value |", "|---|---|"]
    for name, value in scores.get("metrics", {}).items():
        if isinstance(value, dict):
            lines += [f"| {name} {k.replace('_', ' ')} | {v:.4g} |" for k, v in value.items()
                      if isinstance(v, (int, float))]
        elif isinstance(value, (int, float)):
            lines.append(f"| {name} | {value:.4g} |")
    skipped = scores.get("skipped", {})
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"**{name}** ({reason.split(':')[0]})" for name, reason in skipped.items())]
    return "\n".join(lines)


def loss_figure(state: AppState):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = state.records.loss()
    if loss is None or loss.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.plot(loss["step"], loss["loss"], lw=1, color="#9f1239")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (noise MSE)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_tab(state: AppState) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown(metrics_md(state))
        with gr.Column(scale=3):
            figure = loss_figure(state)
            if figure is not None:
                gr.Plot(figure, label="Loss curve (logs/loss.csv)", format="png")
            else:
                gr.Markdown("No `logs/loss.csv` in this run.")
    with gr.Accordion("Config (histosynth.yaml of the run)", open=False):
        gr.Code(state.records.config_yaml(), language="yaml")
    with gr.Accordion("Manifest (manifest.json)", open=False):
        gr.JSON(state.records.manifest())


def header_md(state: AppState) -> str:
    results = state.records.manifest().get("results", {})
    trained = f"{results['steps']} training steps" if results.get("steps") else "training steps not recorded"
    return (f"# histosynth · run `{state.run_dir.name}`\n"
            f"{state.tile_px} px tiles · text encoder `{state.settings.encoder}` · {trained} · "
            f"weights `{state.pipe.unet_dir.name}` ({state.pipe.checkpoint_hash[:12]})")


def build_blocks(state: AppState):
    with gr.Blocks(title=f"histosynth · {state.run_dir.name}", analytics_enabled=False) as blocks:
        gr.Markdown(header_md(state), elem_id="hs-header")
        gr.HTML("<div class='hs-banner'>Synthetic images for research. Not for diagnosis. "
                "Every downloaded PNG is marked <code>synthetic=true</code> in its metadata.</div>")
        with gr.Tabs():
            with gr.Tab("Generate"):
                generate_tab(state)
            if state.texts is not None:  # absent without --workspace: nothing to browse
                with gr.Tab("Browse"):
                    refresh, inputs, outputs = browse_tab(state)
                blocks.load(refresh, inputs, outputs)
            with gr.Tab("Run"):
                run_tab(state)
        gr.Markdown(f"<small>histosynth {__version__} · served from this machine only</small>")
    return blocks
