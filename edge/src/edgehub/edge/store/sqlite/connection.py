"""The connection every concern of the SQLite store shares, and its transaction helpers.

Durability settings: WAL journal, ``synchronous=FULL`` (a committed step survives power loss, not just a
process crash), ``BEGIN IMMEDIATE`` for every write so the daemon and the CLI never deadlock on a lock
upgrade, and a busy timeout so a short overlap waits instead of failing.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import sqlite_vec

from ...errors import SchemaVersionError, StoreError
from ..base import OutgoingFilter
from ..schema import LATEST, MIGRATIONS


def connect(path: Path) -> apsw.Connection:
    """A connection to the store at ``path`` with the store's settings and sqlite-vec loaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = apsw.Connection(str(path))
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())  # L3 vectors (episode_bits)
        conn.enable_load_extension(False)
        conn.set_busy_timeout(5000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except apsw.Error as exc:
        raise StoreError(f"cannot open: {exc.__class__.__name__}: {exc}", path=str(path)) from None
    return conn


def connect_readonly(path: Path) -> apsw.Connection:
    """A read-only connection to the store at ``path`` (SQLite's ``mode=ro``): it writes nothing and
    creates nothing, not even the file or its folder (``StoreError`` when there is no store)."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    try:
        conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.set_busy_timeout(5000)
    except apsw.Error as exc:
        raise StoreError(f"cannot open to read: {exc.__class__.__name__}: {exc}", path=str(path)) from None
    return conn


class Connection:
    """One SQLite file. Not thread-safe: use it from one thread (the event loop)."""

    def __init__(
        self, conn: apsw.Connection, *, path: Path, device_id: str, outgoing: OutgoingFilter | None = None
    ) -> None:
        self._conn = conn
        self.path = path
        self.device_id = device_id
        self.outgoing = outgoing
        """Applied to each event entering the outbox (PII masking); the mind-log keeps the original."""

    def _check_readonly(self) -> None:
        """A store opened read-only must already be at this edgehub's schema (it cannot migrate)."""
        version = self._scalar("PRAGMA user_version")
        if version > LATEST:
            raise SchemaVersionError(path=str(self.path), found=version, supported=LATEST)
        if version < LATEST:
            raise StoreError(
                f"schema version {version} is older than this edgehub's ({LATEST}) and a read-only command "
                "does not upgrade it: run `edgehub edge run` (or `edgehub agent run`) once",
                path=str(self.path),
            )

    def _migrate(self) -> None:
        """Append the schema's migrations this file has not had, one transaction each."""
        version = self._scalar("PRAGMA user_version")
        if version > LATEST:
            raise SchemaVersionError(path=str(self.path), found=version, supported=LATEST)
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            with self._tx():
                if self._scalar("PRAGMA user_version") >= migration.version:
                    continue  # another process migrated while we waited for the lock
                self._conn.execute(migration.sql)
                self._conn.execute(f"PRAGMA user_version={migration.version}")

    @property
    def schema_version(self) -> int:
        return int(self._scalar("PRAGMA user_version"))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, args))

    def close(self) -> None:
        self._conn.close()
