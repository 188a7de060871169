"""The connection every concern of the SQLite store shares, and its transaction helpers.

Durability settings: WAL journal, ``synchronous=FULL`` (a committed step survives power loss, not just a
process crash), ``BEGIN IMMEDIATE`` for every write so the daemon and the CLI never deadlock on a lock
upgrade, and a busy timeout so a short overlap waits instead of failing. The WAL is kept short: SQLite
copies it into the database once it holds ``WAL_AUTOCHECKPOINT_PAGES`` (the daemon also does every
``[store] checkpoint_s``), and truncates the file back to ``WAL_LIMIT_BYTES`` after, so committed state
does not sit for long in a file whose loss would take it along (``watermark`` catches such a loss).

Every write transaction adds one to the store generation (``store_meta``); those that ``seal`` record it
afterwards in the watermark beside the file.
"""

from __future__ import annotations

import contextlib
import errno
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import sqlite_vec

from ...errors import SchemaVersionError, StoreDamaged, StoreError, StoreFull, StoreRolledBack
from ..base import OutgoingFilter
from ..schema import LATEST, MIGRATIONS
from .watermark import Rollback, Watermark, WatermarkFile

WAL_AUTOCHECKPOINT_PAGES = 256
"""SQLite checkpoints the WAL into the database at this many pages (1 MB of 4 KB pages; its default is
1000). Passive: it never waits for a reader."""
WAL_LIMIT_BYTES = 4 * 1024 * 1024
"""After a checkpoint, the WAL file is truncated back to this size (``journal_size_limit``)."""
DAMAGE = (apsw.CorruptError, apsw.NotADBError)
"""What SQLite raises reading a damaged file (anywhere: a pragma at open, a migration, a query)."""
META_VERSION = 9
"""The schema version that added ``store_meta`` (the generation)."""


def connect(path: Path) -> apsw.Connection:
    """A connection to the store at ``path`` with the store's settings and sqlite-vec loaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = apsw.Connection(str(path))
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())  # L3 vectors (episode_bits)
        conn.enable_load_extension(False)
        conn.set_busy_timeout(5000)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file only; an older one: retention.py
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    except DAMAGE as exc:
        raise StoreDamaged(path=str(path), problems=[f"{exc.__class__.__name__}: {exc}"]) from None
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


def check(conn: apsw.Connection, *, full: bool = False) -> list[str]:
    """What SQLite's own check finds wrong (empty: nothing). ``quick_check`` (b-tree pages and records,
    O(file size); what open runs) or, ``full``, ``integrity_check`` (also every index against its table).
    """
    pragma = "integrity_check" if full else "quick_check"
    try:
        found = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}(20)")]
    except apsw.Error as exc:  # too damaged to even check (a broken schema page, not a database)
        return [f"{exc.__class__.__name__}: {exc}"]
    return [] if found == ["ok"] else found


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
        self.watermark = WatermarkFile(path)
        self.rollback: Rollback | None = None
        """Set at open when the file is behind its watermark: every write is refused until accepted."""
        self._acked = 0
        """The highest outbox sequence the hub side acknowledged (what the watermark records)."""
        self._generations = False
        """The schema has ``store_meta`` (after the migrations)."""

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

    def _check_watermark(self, *, record: bool = True) -> None:
        """Compare the store with its watermark (read first: it never runs ahead of a commit another
        process makes meanwhile); set ``rollback`` when commits were lost, start a watermark when none
        (unless not ``record``: a read-only command writes nothing)."""
        mark = self.watermark.read()
        self._generations = self.schema_version >= META_VERSION
        generation = self.generation
        outbox_seq = int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))
        acked = int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE acked = 1"))
        if mark is None:
            self._acked = acked
            if record:
                self._record_watermark(generation)
            return
        self._acked = max(acked, mark.acked_seq)
        if generation < mark.generation or outbox_seq < mark.acked_seq:
            self.rollback = Rollback(generation, mark.generation, mark.acked_seq, outbox_seq)

    def compare_hub(self, applied: int) -> None:
        """Check the store against ``applied``, the last outbox sequence the hub says it applied from
        this device (so the device's own files are not trusted alone). An outbox that ends below it
        went back in time even when the watermark went back with it (an old copy of both put back, a
        store started afresh): ``rollback`` is set, and the watermark records ``applied`` as
        acknowledged, so the next open catches it without asking the hub."""
        self._acked = max(self._acked, applied)
        outbox_seq = int(self._scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox"))
        if outbox_seq >= applied:
            return
        generation, lost = self.generation, self.rollback
        recorded = max(generation, lost.recorded if lost is not None else 0)
        self.rollback = Rollback(generation, recorded, self._acked, outbox_seq, hub_applied=applied)
        self._record_watermark(recorded)

    @property
    def generation(self) -> int:
        """The store generation: how many write transactions it has committed (since ``store_meta``)."""
        return int(self._scalar("SELECT generation FROM store_meta")) if self._generations else 0

    @property
    def rolled_back(self) -> StoreRolledBack | None:
        """Why nothing may resume on this store (None: it is not behind its watermark)."""
        if (lost := self.rollback) is None:
            return None
        return StoreRolledBack(path=str(self.path), lost=lost)

    def integrity(self) -> list[str]:
        """What SQLite's full ``integrity_check`` finds wrong (empty: nothing); slow on a big store."""
        return check(self._conn, full=True)

    @property
    def schema_version(self) -> int:
        return int(self._scalar("PRAGMA user_version"))

    def wal_checkpoint(self) -> tuple[int, int]:
        """Copy what the WAL holds into the database without waiting for readers (PASSIVE); (frames in
        the WAL, frames copied). A reader holding an old snapshot keeps the rest for the next time."""
        frames, copied = self._conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return int(frames), int(copied)

    @contextlib.contextmanager
    def _tx(self, *, seal: bool = False) -> Iterator[None]:
        """A write transaction that adds one to the generation; ``seal``: record it in the watermark
        once committed (each step's checkpoint, each outbox acknowledgement)."""
        if (refused := self.rolled_back) is not None:
            raise refused
        self._conn.execute("BEGIN IMMEDIATE")
        generation = 0
        try:
            yield
            if self._generations:
                ((generation,),) = self._rows(  # read to the end: a statement in progress blocks COMMIT
                    "UPDATE store_meta SET generation = generation + 1 RETURNING generation"
                )
            self._conn.execute("COMMIT")
        except apsw.FullError as exc:  # in a statement or at COMMIT: the whole transaction goes
            self._rollback()
            raise StoreFull(path=str(self.path), detail=str(exc)) from None
        except BaseException:
            self._rollback()
            raise
        if seal and generation:
            self._record_watermark(generation)

    def _rollback(self) -> None:
        """Roll back the open transaction (SQLite may have rolled it back itself already)."""
        if not self._conn.in_transaction:
            return
        self._conn.execute("ROLLBACK")

    def _record_watermark(self, generation: int) -> None:
        try:
            self.watermark.write(Watermark(generation, self._acked))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # the commit stands; the next sealed one records it
                raise StoreFull(path=str(self.watermark.path), detail=str(exc)) from None
            raise StoreError(f"cannot write its watermark: {exc}", path=str(self.watermark.path)) from None

    def _scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, args))

    def close(self) -> None:
        self._conn.close()
