"""SQLite cache of finished summaries: a rerun asks no server twice, a killed run loses nothing.

Keys hash everything that changes a summary (report text, backend, model, prompt version, budget,
tokenizer, generation parameters). Each finished case is committed in its own transaction as soon
as it is done (WAL journal, so readers never block the writer), which is what makes a run killed at
any moment resumable. Values are JSON rows; nothing secret is ever stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries (
    key      TEXT PRIMARY KEY,
    case_id  TEXT NOT NULL,
    budget   INTEGER NOT NULL,
    record   TEXT NOT NULL,
    created  REAL NOT NULL
)
"""


def cache_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SummaryCache:
    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a killed process
        with self.db:
            self.db.execute(SCHEMA)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for i in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, record in self.db.execute(f"SELECT key, record FROM summaries WHERE key IN ({marks})", chunk):
                out[key] = json.loads(record)
        return out

    def put(self, key: str, record: dict) -> None:
        with self.db:  # one transaction per finished case
            self.db.execute(
                "INSERT OR REPLACE INTO summaries (key, case_id, budget, record, created) VALUES (?, ?, ?, ?, ?)",
                (key, record["case_id"], int(record["budget"]), json.dumps(record, ensure_ascii=False), time.time()),
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM summaries").fetchone()[0]

    def close(self) -> None:
        self.db.close()
