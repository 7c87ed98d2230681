"""Stored responses of the Responses API: each response and its input items, kept in an SQLite
database under the server's home so that `previous_response_id` continues a conversation across
requests and restarts.

The standard library's `sqlite3` is enough for one server process: WAL mode lets readers go on
while a response is written, and the schema's version lives in `PRAGMA user_version`. Every row
has an owner (the id of the API key that made it); a lookup by another owner finds nothing. Rows
older than the retention period are deleted as new ones are written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    previous_id TEXT,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""
# How often, at most, expired responses are looked for (seconds).
_SWEEP_EVERY = 3600.0


class StoreVersionError(RuntimeError):
    """The database was written by a newer gpustack."""


@dataclass
class StoredResponse:
    id: str
    owner: str
    previous_id: str | None
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, path: Path, ttl: float):
        """`ttl`: seconds a response is kept (0 or less: forever)."""
        self.path = path
        self.ttl = ttl
        self._swept = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{path} was written by a newer gpustack (schema {version}; this one reads {SCHEMA_VERSION})."
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: calls come from worker threads, and opening one is cheap.
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commits, or rolls back on an error
                yield db
        finally:
            db.close()

    def put(self, stored: StoredResponse) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.owner,
                    stored.response.get("created_at", now),
                    stored.previous_id,
                    json.dumps(stored.response),
                    json.dumps(stored.input_items),
                ),
            )
            if self.ttl > 0 and now - self._swept > _SWEEP_EVERY:  # two threads sweeping at once do no harm
                self._swept = now
                db.execute("DELETE FROM responses WHERE created < ?", (now - self.ttl,))

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response `response_id` of `owner`; None when there is none, it is another's, or it expired."""
        with self._connect() as db:
            row = db.execute(
                "SELECT id, owner, previous_id, response, input_items, created FROM responses"
                " WHERE id = ? AND owner = ?",
                (response_id, owner),
            ).fetchone()
        if row is None or (self.ttl > 0 and row[5] < time.time() - self.ttl):
            return None
        return StoredResponse(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]))

    def delete(self, response_id: str, owner: str) -> bool:
        with self._connect() as db:
            cursor = db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner))
        return cursor.rowcount > 0

    def conversation(self, response_id: str, owner: str, max_depth: int) -> list[StoredResponse] | None:
        """The responses of a conversation that ends at `response_id`, oldest first; None when
        `response_id` is not one of `owner`'s. A chain longer than `max_depth` is cut at its start."""
        chain: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None and len(chain) < max_depth:
            stored = self.get(next_id, owner)
            if stored is None:
                if not chain:
                    return None
                break  # an earlier turn expired or was deleted: the conversation starts after it
            chain.append(stored)
            next_id = stored.previous_id
        chain.reverse()
        return chain
