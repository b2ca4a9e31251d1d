"""`histosynth summary-stats`: token counts (recounted independently), budget share, attempts, findings.

`label_retention` scores summaries against hand labels (histologic type, grade), e.g. the labels of
the 52 TCGA-BRCA reports in ../shared/data, independently of the extractor's own vocabulary.
"""

from __future__ import annotations

import re

from ..tokenizers import load_tokenizer
from ..workspace import Workspace

BIN = 5  # tokens per histogram bin


def budgets_on_disk(ws: Workspace) -> list[int]:
    return ws.summary_budgets()


def budget_stats(table, budget: int) -> dict:
    """Stats of one budget's table; token counts are redone with each row's recorded tokenizer."""
    recount = [load_tokenizer(_tokenizer_id(t)).count(s) for s, t in zip(table.summary, table.tokenizer)]
    hist: dict[str, int] = {}
    for n in recount:
        lo = (n // BIN) * BIN
        hist[f"{lo}-{lo + BIN - 1}"] = hist.get(f"{lo}-{lo + BIN - 1}", 0) + 1
    kept = [len(f) for f in table.findings] if "findings" in table else []
    return {
        "budget": budget,
        "cases": int(len(table)),
        "within_budget": sum(n <= budget for n in recount) / max(1, len(recount)),
        "recount_matches_recorded": bool(all(a == b for a, b in zip(recount, table.n_tokens))),
        "tokens_mean": sum(recount) / max(1, len(recount)),
        "tokens_max": max(recount, default=0),
        "histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0]))),
        "attempts": {str(k): int(v) for k, v in sorted(table.attempts.value_counts().items())},
        "statuses": {str(k): int(v) for k, v in table.status.value_counts().items()},
        "findings_kept_mean": sum(kept) / max(1, len(kept)),
        "findings_found_mean": float(table.n_found.mean()) if "n_found" in table and table.n_found.notna().any() else None,
    }


def _tokenizer_id(recorded: str) -> str:
    """The name `load_tokenizer` takes for a recorded tokenizer name."""
    return "clip" if recorded == "clip-bpe" else recorded


def label_retention(table, labels) -> dict:
    """Share of labelled histologic types / grades that the summaries still state."""
    labels = labels.set_index("patient_id")
    typed = graded = type_hits = grade_hits = 0
    for case_id, summary in zip(table.case_id, table.summary):
        if case_id not in labels.index:
            continue
        row = labels.loc[case_id]
        if row.histologic_type != "none_stated":
            typed += 1
            wanted = row.histologic_type.replace("mixed_ductal_lobular", "ductal+lobular").split("+")
            type_hits += all(re.search(rf"\b{re.escape(t.split('_')[0])}", summary, re.I) for t in wanted)
        if str(row.grade) != "none_stated":
            graded += 1
            grade_hits += bool(re.search(rf"\bgrade {row.grade}\b", summary, re.I))
    return {"type_retention": type_hits / max(1, typed), "type_n": typed,
            "grade_retention": grade_hits / max(1, graded), "grade_n": graded}


def workspace_stats(ws: Workspace, budgets: list[int] | None = None) -> list[dict]:
    from .summarize import read_summaries

    return [budget_stats(read_summaries(ws, b), b) for b in (budgets or budgets_on_disk(ws))]


LABEL_TYPE_WORDS = ("ductal", "lobular", "mucinous", "medullary", "metaplastic", "micropapillary", "tubular",
                    "cribriform", "papillary", "apocrine")


def label_contradictions(table, labels, confidences=("high", "medium")) -> list[dict]:
    """Summaries that state a histologic type or grade contradicting a confident hand label.

    A type contradicts when the summary names types (outside "... in situ") and none is the labelled
    one; a grade contradicts when the first "grade N" differs from the label. Unstated is not a contradiction.
    """
    labels = labels.set_index("patient_id")
    out = []
    for case_id, summary in zip(table.case_id, table.summary):
        if case_id not in labels.index or labels.loc[case_id].confidence not in confidences:
            continue
        row = labels.loc[case_id]
        invasive = re.sub(r"\w+ carcinoma in situ", " ", summary, flags=re.I)
        stated = {t for t in LABEL_TYPE_WORDS if re.search(rf"\b{t}", invasive, re.I)}
        wanted = {t.split("_")[0] for t in row.histologic_type.replace("mixed_ductal_lobular", "ductal+lobular").split("+")}
        if row.histologic_type != "none_stated" and stated and not stated & wanted:
            out.append({"case_id": case_id, "field": "type", "label": row.histologic_type, "summary": summary})
        grades = re.findall(r"\bgrade (\d)\b", summary, re.I)
        if str(row.grade) != "none_stated" and grades and grades[0] != str(row.grade):
            out.append({"case_id": case_id, "field": "grade", "label": str(row.grade), "summary": summary})
    return out
