"""Cross-cancer summaries: colorectal, lung and breast reports written for the tests (synoptic, narrative,
OCR-damaged), histologic type kept at every budget in both tokenizers; nothing breast-specific leaks."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from histosynth.reports.extractive import summarize_report
from histosynth.tokenizers import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent / "data"))
from cross_cancer_reports import REPORTS  # noqa: E402

BUDGETS = (20, 35, 50, 154)


def test_set_covers_three_cancers_in_three_styles():
    for cancer in ("colorectal", "lung", "breast"):
        mine = [r for r in REPORTS if r[0] == cancer]
        assert len(mine) >= 10 and {r[1] for r in mine} == {"synoptic", "narrative", "ocr"}


@pytest.mark.parametrize("tokenizer", ["minilm", "clip"])
def test_type_kept_at_every_budget(tokenizer):
    tok = load_tokenizer(tokenizer)
    missed = []
    for cancer, style, expected, text in REPORTS:
        for budget in BUDGETS:
            summary = summarize_report(text, budget, tok)
            assert summary.n_tokens <= budget and summary.status == "ok"
            if not re.search(expected, summary.text, re.I):
                missed.append((cancer, style, budget, expected, summary.text))
            if cancer != "breast":  # breast grading and breast-only wording stay with breast reports
                assert not re.search(r"nottingham|invasive ductal|invasive lobular|DCIS", summary.text, re.I), summary.text
    assert not missed, missed


def test_lung_and_colorectal_details():
    tok = load_tokenizer("minilm")
    by_start = {text[:40]: text for _, _, _, text in REPORTS}
    rectal = next(t for k, t in by_start.items() if "LOW ANTERIOR" in t)
    assert summarize_report(rectal, 154, tok).text.startswith("Adenocarcinoma with mucinous component (30%)")
    assert "treatment effect after neoadjuvant therapy" in summarize_report(rectal, 154, tok).text
    nsclc = next(t for t in by_start.values() if "favour adenocarcinoma" in t)
    assert summarize_report(nsclc, 20, tok).text.startswith("Adenocarcinoma")  # NSCLC NOS yields to the specific type
