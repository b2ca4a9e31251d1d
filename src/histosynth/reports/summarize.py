"""`reports.parquet` -> `summaries/budget-<N>.parquet`: one complete, in-budget summary per case.

Finished cases go to the SQLite cache one transaction at a time, and the Parquet table is rebuilt
from the cache at the end, so a run killed at any moment and started again finishes with no lost
and no duplicated rows, and asks no server again for a case it already finished.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

from ..config import HistoSynthConfig
from ..console import HistosynthError, info, make_progress, warn
from ..fileio import atomic_path
from ..manifest import recording
from ..tokenizers import Tokenizer, tokenizer_for
from ..workspace import Workspace
from .cache import SummaryCache, cache_key
from .extractive import BACKEND_MODEL, PROMPT_VERSION, problems, summarize_report
from .ingest import read_reports

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("case_id", "budget", "summary", "n_tokens", "tokenizer", "backend", "model", "prompt_version",
           "attempts", "status", "findings")
EXTRA = ("split", "n_found", "requests", "system_fingerprint", "attempt_log")


def cache_path(ws: Workspace):
    return ws.summaries_dir / "cache.sqlite"


def extractive_row(case_id: str, text: str, budget: int, tokenizer: Tokenizer) -> dict:
    s = summarize_report(text, budget, tokenizer)
    return {"case_id": case_id, "budget": budget, "summary": s.text, "n_tokens": s.n_tokens,
            "tokenizer": s.tokenizer, "backend": "extractive", "model": BACKEND_MODEL,
            "prompt_version": PROMPT_VERSION, "attempts": 1, "status": s.status, "findings": list(s.findings),
            "n_found": s.n_found, "requests": 0, "system_fingerprint": None, "attempt_log": "[]"}


def key_params(cfg: HistoSynthConfig, backend: str) -> dict:
    """Everything besides text, budget and tokenizer that changes a summary."""
    s = cfg.summaries
    if backend == "extractive":
        return {"backend": backend, "model": BACKEND_MODEL, "prompt_version": PROMPT_VERSION}
    return {"backend": backend, "model": s.model, "prompt_version": s.prompt, "base_url": s.base_url,
            "temperature": s.temperature, "seed": s.seed, "max_attempts": s.max_attempts, "redact": s.redact,
            "findings": s.findings}


def summarize_workspace(ws: Workspace, cfg: HistoSynthConfig, budget: int, backend: str | None = None,
                        refresh: bool = False, regenerate=()) -> pd.DataFrame:
    """Summarize every report at `budget` tokens; writes and returns `summaries/budget-<N>.parquet`."""
    backend = backend or cfg.summaries.backend
    if backend not in ("extractive", "openai"):
        raise HistosynthError(f"--backend {backend}: choose extractive or openai")
    reports = read_reports(ws)
    tokenizer = tokenizer_for(cfg)
    params = key_params(cfg, backend)
    regenerate = set(regenerate)
    unknown = regenerate - set(reports.case_id)
    if unknown:
        warn(f"--regenerate: no report for {', '.join(sorted(unknown))}")
    keys = {c: cache_key(text=t, budget=budget, tokenizer=tokenizer.name, **params)
            for c, t in zip(reports.case_id, reports.text)}
    cache = SummaryCache(cache_path(ws))
    with recording("summarize", ws.summaries_dir, config=cfg, seeds={"llm": cfg.summaries.seed},
                   filename=f"manifest-budget-{budget}.json") as manifest:
        manifest.add_input(ws.reports_path, "reports")
        cached = {} if refresh else cache.get_many(list(keys.values()))
        rows = {c: cached[k] for c, k in keys.items() if k in cached and c not in regenerate}
        todo = [(c, t) for c, t in zip(reports.case_id, reports.text) if c not in rows]
        info(f"summarize: {len(rows)} cached, {len(todo)} to do ({backend}, budget {budget} {tokenizer.name} tokens)")
        requests = run_cases(todo, cfg, budget, backend, tokenizer, keys, cache, rows)
        table = build_table(rows, reports, budget, tokenizer)
        with atomic_path(ws.summaries_path(budget)) as tmp:
            table.to_parquet(tmp, index=False)
        manifest.results.update({
            "budget": budget, "tokenizer": tokenizer.name, "backend": backend, "cases": len(table),
            "cached": len(keys) - len(todo), "generated": len(todo), "api_requests": requests,
            "statuses": {str(k): int(v) for k, v in table.status.value_counts().items()},
            "within_budget": float((table.n_tokens <= budget).mean()) if len(table) else 1.0,
            "redactions": redaction_totals(table) if backend == "openai" else {},
        })
    cache.close()
    return table


def run_cases(todo, cfg, budget, backend, tokenizer, keys, cache, rows) -> int:
    """Summarize `todo`, committing each finished case to the cache at once; returns API requests."""
    if not todo:
        return 0
    with make_progress() as progress:
        task = progress.add_task(f"summaries ({backend})", total=len(todo))
        if backend == "extractive":
            for case_id, text in todo:
                rows[case_id] = finish(extractive_row(case_id, text, budget, tokenizer), keys, cache)
                progress.advance(task)
            return 0
        from .llm import LLMSummarizer

        summarizer = LLMSummarizer(cfg.summaries, tokenizer, budget)
        if summarizer.redacting:
            info(f"summarize: personal identifiers are redacted before sending reports to {cfg.summaries.base_url or 'api.openai.com'}")
        pool = ThreadPoolExecutor(max_workers=cfg.summaries.concurrency)
        try:
            futures = {pool.submit(summarizer.summarize, c, t): c for c, t in todo}
            for future in as_completed(futures):
                rows[futures[future]] = finish(future.result(), keys, cache)
                progress.advance(task)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return summarizer.client.requests


def finish(row: dict, keys: dict, cache: SummaryCache) -> dict:
    """Check the row and commit it; errors (server down) are not cached, so a rerun tries again."""
    if row["status"] != "error":
        cache.put(keys[row["case_id"]], row)
    return row


def build_table(rows: dict, reports, budget: int, tokenizer: Tokenizer):
    import pandas as pd

    split = dict(zip(reports.case_id, reports.split))
    records = []
    for case_id in sorted(rows):
        row = {**rows[case_id], "case_id": case_id}  # a cached row may be another case's with the same text
        issues = problems(row["summary"], budget, tokenizer)
        if issues:  # a stored summary is always complete and in budget; this would be a bug
            raise HistosynthError(f"summary of {case_id} fails its own check ({'; '.join(issues)})")
        row["split"] = split.get(case_id)
        if isinstance(row.get("redactions"), dict):
            row["redactions"] = json.dumps(row["redactions"])
        records.append(row)
    table = pd.DataFrame.from_records(records)
    ordered = list(COLUMNS) + [c for c in EXTRA if c in table] + [c for c in table if c not in COLUMNS + EXTRA]
    return table[ordered] if len(table) else pd.DataFrame(columns=list(COLUMNS))


def redaction_totals(table) -> dict:
    totals: dict[str, int] = {}
    for value in table.get("redactions", []):
        for kind, n in (json.loads(value) if isinstance(value, str) and value else {}).items():
            totals[kind] = totals.get(kind, 0) + n
    return totals


def read_summaries(ws: Workspace, budget: int):
    import pandas as pd

    return pd.read_parquet(ws.require(ws.summaries_path(budget), f"summarize --workspace WS --budget {budget}"))
