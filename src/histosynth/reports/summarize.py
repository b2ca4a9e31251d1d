"""`reports.parquet` -> `summaries/budget-<N>.parquet`: one complete, in-budget summary per case.

Finished cases go to the SQLite cache one transaction at a time, and the Parquet table is rebuilt
from the cache at the end, so a run killed at any moment and started again finishes with no lost
and no duplicated rows, and asks no server again for a case it already finished.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

from ..config import ConfigError, HistoSynthConfig, SummariesConfig
from ..console import HistosynthError, info, make_progress, warn
from ..fileio import atomic_path
from ..locks import stage_lock
from ..manifest import recording
from ..tokenizers import Tokenizer, tokenizer_for
from ..workspace import Workspace
from .cache import SummaryCache, cache_key
from .extractive import BACKEND_MODEL, PROMPT_VERSION, problems, summarize_report
from .ingest import read_report_columns

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

COLUMNS = ("case_id", "budget", "summary", "n_tokens", "tokenizer", "backend", "model", "prompt_version",
           "attempts", "status", "findings")
EXTRA = ("split", "n_found", "requests", "system_fingerprint", "attempt_log")
# Reports longer than this are summarized from their first MAX_REPORT_CHARS characters (with a warning):
# real pathology reports are 1-20 kB; longer "reports" are concatenated exports or OCR garbage.
MAX_REPORT_CHARS = 200_000


def check_budget(budget: int, option: str = "--budget") -> int:
    """A budget by the config's own rule (summaries.budget), as a one-line error naming the option."""
    from pydantic import ValidationError

    try:
        SummariesConfig(budget=budget)
    except ValidationError as exc:
        raise ConfigError(f"{option} {budget}: {exc.errors()[0]['msg']}") from None
    return budget


def capped(case_id: str, text: str, long_cases: list[str]) -> str:
    if len(text) > MAX_REPORT_CHARS:
        long_cases.append(case_id)
        return text[:MAX_REPORT_CHARS]
    return text


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
                        refresh: bool = False, regenerate=(), frame: bool = True) -> pd.DataFrame | pa.Table:
    """Summarize every report at `budget` tokens; writes and returns `summaries/budget-<N>.parquet`.

    Raises HistosynthError (after writing the table) when any case failed on the LLM backend: those rows
    hold the extractive summary and say so (backend "extractive", status "error"); a rerun retries them.
    Returns a pandas DataFrame, or with `frame=False` the Arrow table (the CLI: no pandas import, faster start).
    """
    backend = backend or cfg.summaries.backend
    if backend not in ("extractive", "openai"):
        raise ConfigError(f"--backend {backend}: choose extractive or openai")
    check_budget(budget)
    with stage_lock(ws.lock_path("summarize"), "summarize"):
        table = _summarize_locked(ws, cfg, budget, backend, refresh, set(regenerate))
    return table.to_pandas() if frame else table


def _summarize_locked(ws: Workspace, cfg: HistoSynthConfig, budget: int, backend: str, refresh: bool,
                      regenerate: set[str]) -> pa.Table:
    import pyarrow.parquet as pq

    reports = read_report_columns(ws, ["case_id", "text", "split"])
    long_cases: list[str] = []
    reports["text"] = [capped(c, t or "", long_cases) for c, t in zip(reports["case_id"], reports["text"])]
    if long_cases:
        warn(f"{len(long_cases)} report(s) longer than {MAX_REPORT_CHARS // 1000} kB are summarized from their "
             f"first {MAX_REPORT_CHARS // 1000} kB: {', '.join(long_cases[:10])}{' ...' if len(long_cases) > 10 else ''}")
    tokenizer = tokenizer_for(cfg)
    params = key_params(cfg, backend)
    unknown = regenerate - set(reports["case_id"])
    if unknown:
        warn(f"--regenerate: no report for {', '.join(sorted(unknown))}")
    keys = {c: cache_key(text=t, budget=budget, tokenizer=tokenizer.name, **params)
            for c, t in zip(reports["case_id"], reports["text"])}
    cache = SummaryCache(ws.summaries_cache_path)
    manifest_path = ws.summaries_manifest_path(budget)
    with recording("summarize", manifest_path.parent, config=cfg, seeds={"llm": cfg.summaries.seed},
                   filename=manifest_path.name) as manifest:
        manifest.add_input(ws.reports_path, "reports")
        cached = {} if refresh else cache.get_many(list(keys.values()))
        rows = {c: cached[k] for c, k in keys.items() if k in cached and c not in regenerate}
        todo = [(c, t) for c, t in zip(reports["case_id"], reports["text"]) if c not in rows]
        info(f"summarize: {len(rows)} cached, {len(todo)} to do ({backend}, budget {budget} {tokenizer.name} tokens)")
        requests = run_cases(todo, cfg, budget, backend, tokenizer, keys, cache, rows)
        records = build_records(rows, reports, budget, tokenizer)
        table = arrow_table(records)
        with atomic_path(ws.summaries_path(budget)) as tmp:
            pq.write_table(table, tmp)
        manifest.results.update({
            "budget": budget, "tokenizer": tokenizer.name, "backend": backend, "cases": len(records),
            "cached": len(keys) - len(todo), "generated": len(todo), "api_requests": requests,
            "statuses": dict(Counter(str(r["status"]) for r in records)),
            "within_budget": sum(r["n_tokens"] <= budget for r in records) / len(records) if records else 1.0,
            "redactions": redaction_totals(r.get("redactions") for r in records) if backend == "openai" else {},
            "long_reports_capped": long_cases,
        })
        failed = sorted(c for c, r in rows.items() if r["status"] == "error")
        manifest.results["failed_cases"] = failed
        cache.close()
        if failed:
            raise HistosynthError(failure_message(failed, len(rows), rows[failed[0]]))
    return table


def failure_message(failed: list[str], total: int, example: dict) -> str:
    reason = next((e["error"] for e in json.loads(example.get("attempt_log") or "[]") if "error" in e), "request failed")
    shown = ", ".join(failed[:20]) + (f" and {len(failed) - 20} more" if len(failed) > 20 else "")
    return (f"summarize: {len(failed)} of {total} case(s) failed on the LLM backend ({reason.split(';')[0]}): {shown}; "
            f"their rows hold the extractive summary (backend=extractive, status=error); rerun to retry them")


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


def build_records(rows: dict, reports: dict, budget: int, tokenizer: Tokenizer) -> list[dict]:
    split = dict(zip(reports["case_id"], reports["split"]))
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
    return records


INT_COLUMNS = {"budget", "n_tokens", "attempts", "n_found", "requests"}


def _arrow_type(column: str, values: list):
    import pyarrow as pa

    if column == "findings":
        return pa.list_(pa.string())
    if column in INT_COLUMNS:
        return pa.int64()
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    if kinds == {bool}:
        return pa.bool_()
    return pa.string()


def arrow_table(records: list[dict]):
    """The summaries as an Arrow table, fixed columns first (missing fields are nulls).

    Built by pyarrow's own JSON reader with an explicit schema: every Python -> Arrow conversion
    (`pa.array`, `pa.table`) imports pandas first, which would double the start-up time of `summarize`.
    """
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    names = list(COLUMNS) + [c for c in EXTRA if any(c in r for r in records)]
    names += sorted({k for r in records for k in r} - set(names))
    schema = pa.schema([(c, _arrow_type(c, [r.get(c) for r in records])) for c in names])
    rows = [{c: (str(r[c]) if r.get(c) is not None and schema.field(c).type == pa.string() else r.get(c))
             for c in names} for r in records]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8")
    if not data:
        return schema.empty_table()
    options = pj.ReadOptions(block_size=min(2 ** 31 - 1, max(1 << 20, len(data) + 1)), use_threads=False)
    return pj.read_json(io.BytesIO(data), read_options=options, parse_options=pj.ParseOptions(explicit_schema=schema))


def redaction_totals(values) -> dict:
    totals: dict[str, int] = {}
    for value in values:
        for kind, n in (json.loads(value) if isinstance(value, str) and value else {}).items():
            totals[kind] = totals.get(kind, 0) + n
    return totals


def read_summaries(ws: Workspace, budget: int):
    import pandas as pd

    return pd.read_parquet(ws.require(ws.summaries_path(budget), f"summarize --workspace WS --budget {budget}"))
