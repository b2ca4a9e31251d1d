"""reports stage: ingest and link pathology reports, then token-budgeted summaries.

    ingest.py      CSV / JSONL / .txt folder -> reports/reports.parquet, linked to tiles by barcode
    clean.py       mild OCR clean-up
    findings.py    image-relevant findings in noisy reports (types, grade, DCIS, LVI, necrosis, ...)
    extractive.py  budgeted, complete summaries (offline, deterministic) and the completeness check
    llm.py         openai-SDK backend: prompts, redaction, retries, re-generation with feedback
    cache.py       SQLite cache (resume, zero-call reruns)
    summarize.py   summaries/budget-<N>.parquet for a workspace
    stats.py       summary-stats and retention against hand labels
    mockserver.py  a scripted OpenAI-compatible server on 127.0.0.1 (tests, benchmark)
"""
