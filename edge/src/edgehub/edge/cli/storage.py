"""``edgehub edge storage``: what the store keeps per kind of data, how much, what retention may prune
now, and the files. Read-only: it opens the store with SQLite's ``mode=ro`` and creates nothing."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from rich.table import Table

from edgehub.cli.common import console, err

from ..config import RetentionConfig
from ..store.retention import KINDS, choose, rules_of
from ..store.sqlite import SqliteStore
from ..store.sqlite.retention import FileStats

ALL = 2**62
"""Candidates to look at: all of them (a command, not the daemon's batches)."""


@dataclass(frozen=True, slots=True)
class KindReport:
    """One kind of data in the store."""

    kind: str
    rows: int
    bytes: int
    """Its rows' data (an estimate)."""
    disk_bytes: int | None
    """The pages its tables and indexes use (``dbstat``; None: not available)."""
    oldest: float | None
    prunable_rows: int
    """What the next pass would delete (the daemon also waits for L3 to index a step)."""
    prunable_bytes: int
    pruned_rows: int
    """What retention deleted over the store's life."""
    max_age_days: float | None
    max_rows: int | None
    max_mb: float | None
    """The byte limit in effect (its own, or its share of ``budget_mb``); None: retention off."""


def kind_reports(store: SqliteStore, retention: RetentionConfig, now: float) -> list[KindReport]:
    rules, pruned = rules_of(retention), store.pruned_so_far()
    reports = []
    for kind in KINDS:
        totals = store.retention_totals(kind)
        rule = rules.get(kind)
        prunable = choose(store.prune_candidates(kind, ALL), rule, totals, now) if rule is not None else []
        own = getattr(retention, kind)
        reports.append(
            KindReport(
                kind=kind,
                rows=totals.rows,
                bytes=totals.bytes,
                disk_bytes=store.disk_bytes(kind),
                oldest=totals.oldest,
                prunable_rows=len(prunable),
                prunable_bytes=sum(c.bytes for c in prunable),
                pruned_rows=pruned.get(kind, (0, 0.0))[0],
                max_age_days=own.max_age_days if rule is not None else None,
                max_rows=own.max_rows if rule is not None else None,
                max_mb=round(retention.max_bytes(kind) / 2**20, 1) if rule is not None else None,
            )
        )
    return reports


def show(store: SqliteStore, retention: RetentionConfig, *, as_json: bool) -> None:
    """Print the store's report (a table, or one JSON object)."""
    kinds, files = kind_reports(store, retention, time.time()), store.file_stats()
    if as_json:
        print(
            json.dumps(
                {"kinds": [asdict(k) for k in kinds], "files": asdict(files), "retention": retention.enabled}
            )
        )
        return
    table = Table("kind", "rows", "data", "on disk", "oldest", "prunable now", "pruned so far", "retention")
    for k in kinds:
        table.add_row(
            k.kind,
            f"{k.rows:,}",
            _size(k.bytes),
            _size(k.disk_bytes) if k.disk_bytes is not None else "-",
            _when(k.oldest),
            f"{k.prunable_rows:,} ({_size(k.prunable_bytes)})",
            f"{k.pruned_rows:,}",
            _setting(k),
        )
    console.print(table)
    console.print(_files(files))
    if not retention.enabled:
        err.print("[yellow]retention is off ([retention] enabled = false): the store grows without bound[/]")


def _files(f: FileStats) -> str:
    return (
        f"database {_size(f.db_bytes)}, write-ahead log {_size(f.wal_bytes)}; {f.pages:,} pages of"
        f" {f.page_size} bytes, {f.free_pages:,} free; auto_vacuum {f.auto_vacuum}"
    )


def _setting(k: KindReport) -> str:
    if k.max_mb is None:
        return "off"
    parts = [f"{k.max_age_days:g} days"] if k.max_age_days is not None else []
    parts += [f"{k.max_rows:,} rows"] if k.max_rows is not None else []
    return ", ".join([*parts, f"{k.max_mb:g} MB"])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GB"


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")
