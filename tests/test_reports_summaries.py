"""Extractive summaries measured against the 52 hand-labelled TCGA-BRCA reports at every budget, in the
MiniLM and CLIP tokenizers, plus the rules a budget must respect (dominant type by stated share, qualifiers,
no finding dropped while budget remains, never "No findings." for a case with a finding)."""

from __future__ import annotations

import pandas as pd
import pytest

from histosynth.reports.extractive import render, summarize_report
from histosynth.reports.findings import find_findings
from histosynth.reports.stats import label_contradictions, label_retention
from histosynth.tokenizers import load_tokenizer

BUDGETS = (20, 35, 50, 154)


@pytest.fixture(scope="module", params=["minilm", "clip"])
def tok(request):
    return load_tokenizer(request.param)


def test_labelled_reports_every_budget(tok, real_reports, real_labels):
    reports, labels = pd.read_csv(real_reports), pd.read_csv(real_labels)
    kept_before: dict[str, set] = {}
    for budget in BUDGETS:
        rows = [summarize_report(t, budget, tok) for t in reports.text]
        table = pd.DataFrame({"case_id": reports.patient_id, "summary": [s.text for s in rows]})
        assert label_contradictions(table, labels) == []
        assert label_retention(table, labels)["type_retention"] == 1.0  # 52/52
        assert all(s.status == "ok" for s in rows)  # every labelled case has a finding: never "No findings."
        for case, text, s in zip(reports.patient_id, reports.text, rows):
            findings = find_findings(text)
            kinds = {f.kind for f in findings if any(p in f.forms for p in s.findings)}
            assert kept_before.get(case, set()) <= kinds, (case, budget)  # more budget never drops a finding
            kept_before[case] = kinds
            shortest = [next(f.forms[-1] for f in findings if p in f.forms) for p in s.findings]
            for f in findings:  # a dropped finding did not fit, even in its shortest form
                if f.kind not in kinds:
                    assert tok.count(render(shortest + [f.forms[-1]])) > budget, (case, budget, f.kind)


@pytest.mark.unit
@pytest.mark.parametrize("budget", BUDGETS)
def test_stated_share_and_qualifiers(tok, budget):
    nst_micro = ("Invasive carcinoma of no special type with 70 % micropapillary features. Nottingham grade 3. "
                 "Focal ductal carcinoma, no special type, at the margin.")
    assert summarize_report(nst_micro, budget, tok).text.startswith("Invasive micropapillary carcinoma")
    text = ("Residual invasive ductal carcinoma, grade 2, with treatment effect after neoadjuvant chemotherapy, "
            "medullary features and pools of extracellular mucin.")
    s = summarize_report(text, budget, tok).text
    if budget >= 35:
        assert "treatment effect after neoadjuvant therapy" in s and "medullary features" in s and "mucin pools" in s
    assert s.startswith(("Invasive ductal carcinoma", "Ductal carcinoma"))


@pytest.mark.unit
def test_tight_budget_keeps_a_finding(tok):
    for text in ("Papillary thyroid carcinoma, tall cell variant.", "Clear cell renal cell carcinoma, Fuhrman grade 2."):
        s = summarize_report(text, 5, tok)
        assert s.status == "ok" and s.text.endswith("carcinoma.") and s.n_tokens <= 5
