"""Texts per second of the real MiniLM encoder at 35 and 154 tokens, side by side in one run.

Texts are real TCGA-BRCA reports (../shared/data) cut to fill each context (33 or 152 tokens plus
[CLS]/[SEP]), so both lengths do the work a full summary of that budget costs. The two lengths are
timed in alternating rounds (median of the rounds), so background load hits both alike; the
ratio is the number to compare across machines.

    .venv/bin/python benchmarks/text_embed.py [--texts 256] [--batch 64] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT.parent / "shared" / "data" / "reports" / "tcga_brca_reports_52.csv"
CONTEXTS = (35, 154)


def texts_filling(encoder, reports: list[str], n: int, context: int) -> list[str]:
    """n texts of context - 2 tokens each, cut from the reports (reused round-robin)."""
    tok, out = encoder.tokenizer, []
    for i in range(n):
        ids = tok.encode(reports[i % len(reports)])[: context - 2]
        text = tok.decode(ids)
        while tok.count(text) > context - 2:  # decoding can merge word pieces into longer words
            ids = ids[:-1]
            text = tok.decode(ids)
        out.append(text)
    return out


def time_encode(encoder, texts: list[str], context: int, batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        encoder.encode(texts[start : start + batch], context)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pandas as pd
    import torch

    from histosynth.text.encoders import load_encoder

    torch.set_num_threads(args.threads)
    encoder = load_encoder("minilm")
    reports = list(pd.read_csv(REPORTS)["text"].astype(str))
    texts = {L: texts_filling(encoder, reports, args.texts, L) for L in CONTEXTS}
    for L in CONTEXTS:
        time_encode(encoder, texts[L][: args.batch], L, args.batch)  # warm-up
    seconds = {L: [] for L in CONTEXTS}
    for _ in range(args.rounds):
        for L in CONTEXTS:
            seconds[L].append(time_encode(encoder, texts[L], L, args.batch))

    print(f"MiniLM (all-MiniLM-L6-v2, 384-d), {args.texts} texts, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.rounds} rounds")
    rate = {}
    for L in CONTEXTS:
        s = statistics.median(seconds[L])
        rate[L] = args.texts / s
        print(f"  context {L:3d}: {s:6.2f} s  {rate[L]:7.1f} texts/s")
    print(f"  154 vs 35 tokens: {rate[35] / rate[154]:.2f}x slower")


if __name__ == "__main__":
    main()
