"""Budgeted, complete summaries: deterministic, offline, counted in the text encoder's tokenizer.

A summary is a list of whole findings ("Invasive ductal carcinoma; Nottingham grade 3; DCIS
present.") built greedily in order of importance: first every finding that fits in its shortest
form, then each kept finding upgraded to its longest form that still fits. The budget is checked
by counting the final text, so it holds for any tokenizer. `problems` is the completeness check
every stored summary passes, whichever backend wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..tokenizers import Tokenizer
from .findings import VOCABULARY_VERSION, Finding, find_findings

BACKEND_MODEL = "histosynth-extractive"
PROMPT_VERSION = VOCABULARY_VERSION
NO_FINDINGS = "No histologic findings stated."
TERMINAL = (".", "!", "?")
# A complete sentence does not end on these words ("... with micropapillary" cut by max_tokens does).
DANGLING = {"a", "an", "and", "or", "of", "the", "with", "without", "to", "in", "on", "for", "by", "from",
            "at", "as", "is", "are", "was", "but", "nor", "into", "showing", "including", "grade"}


@dataclass(frozen=True)
class Summary:
    text: str
    n_tokens: int
    tokenizer: str
    findings: tuple[str, ...] = ()   # the renderings kept, in order
    n_found: int = 0                 # findings in the report (kept or not)
    status: str = "ok"               # "ok" | "no-findings"
    dropped: tuple[str, ...] = field(default=())  # kinds that did not fit the budget


def render(parts: list[str]) -> str:
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def compose(findings: list[Finding], budget: int, tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """Pick one form per finding so that the rendered text fits `budget` tokens."""
    chosen: dict[int, int] = {}  # finding index -> form index
    for i, finding in enumerate(findings):  # pass 1: as many findings as fit, shortest forms
        trial = {**chosen, i: len(finding.forms) - 1}
        if _fits(findings, trial, budget, tokenizer):
            chosen = trial
    for i in sorted(chosen):  # pass 2: the most detail that still fits, most important first
        for form in range(chosen[i]):
            trial = {**chosen, i: form}
            if _fits(findings, trial, budget, tokenizer):
                chosen = trial
                break
    parts = [findings[i].forms[j] for i, j in sorted(chosen.items())]
    dropped = [f.kind for i, f in enumerate(findings) if i not in chosen]
    return parts, dropped


def _head(form: str, budget: int, tokenizer: Tokenizer) -> list[str]:
    """The longest word suffix of `form` that fits ("renal cell carcinoma" -> "cell carcinoma" -> "carcinoma")."""
    words = form.split()
    for k in range(1, len(words)):
        tail = " ".join(words[k:])
        if tail.split()[0].lower() not in DANGLING and tokenizer.count(render([tail])) <= budget:
            return [tail]
    return []


def _fits(findings: list[Finding], chosen: dict[int, int], budget: int, tokenizer: Tokenizer) -> bool:
    text = render([findings[i].forms[j] for i, j in sorted(chosen.items())])
    return tokenizer.count(text) <= budget


def summarize_report(text: str, budget: int, tokenizer: Tokenizer) -> Summary:
    """The image-relevant findings of one report as a complete summary of at most `budget` tokens."""
    findings = find_findings(text)
    if findings and tokenizer.count(render([findings[0].forms[-1]])) > budget:
        # the most important finding does not fit even in its shortest form: keep its head words
        # ("renal cell carcinoma" -> "carcinoma") rather than lose it to less important ones
        head = _head(findings[0].forms[-1], budget, tokenizer)
        findings[0] = Finding(findings[0].kind, findings[0].forms + tuple(head))
    parts, dropped = compose(findings, budget, tokenizer)
    status = "ok"
    summary = render(parts)
    if not summary:
        summary, status = NO_FINDINGS, "no-findings"
        if tokenizer.count(summary) > budget:
            summary = "No findings."
    return Summary(
        text=summary,
        n_tokens=tokenizer.count(summary),
        tokenizer=tokenizer.name,
        findings=tuple(parts),
        n_found=len(findings),
        status=status,
        dropped=tuple(dropped),
    )


# ---- completeness check and sentence-level compression (for LLM replies) ---------------------
def problems(text: str, budget: int, tokenizer: Tokenizer) -> list[str]:
    """What makes `text` unacceptable as a stored summary; [] when it is fine."""
    text = text.strip()
    if not text:
        return ["empty reply"]
    issues = []
    n = tokenizer.count(text)
    if n > budget:
        issues.append(f"{n} tokens, limit {budget}")
    if not text.rstrip("\"')]").endswith(TERMINAL):
        issues.append("incomplete: does not end with terminal punctuation")
    words = re.findall(r"\w+", text)
    if words and words[-1].lower() in DANGLING:
        issues.append(f"incomplete: ends with '{words[-1]}'")
    if text.count("(") != text.count(")"):
        issues.append("incomplete: unbalanced parentheses")
    return issues


def units(text: str) -> list[str]:
    """Sentences, then clauses (split at ';'), each a whole statement."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        out.extend(c.strip() for c in sentence.split(";") if c.strip())
    return out


def compress_sentences(text: str, budget: int, tokenizer: Tokenizer) -> str | None:
    """Keep whole sentences/clauses of `text`, in order, while the result fits; None if none does."""
    kept: list[str] = []
    for unit in units(text):
        unit = unit.rstrip(".!?;, ")
        words = re.findall(r"\w+", unit)
        if not words or words[-1].lower() in DANGLING or unit.count("(") != unit.count(")"):
            continue  # a cut-off clause is not a whole finding
        trial = "; ".join(kept + [unit]) + "."
        if tokenizer.count(trial) <= budget:
            kept.append(unit)
    if not kept:
        return None
    out = "; ".join(kept) + "."
    return out[0].upper() + out[1:]
