"""The SQL text of partition DDL, built in one place from checked identifiers.

Each function returns one statement as a string. Identifiers go through
:func:`sigma_db.identifiers.quote` (validated, then quoted); bounds are rendered from
:class:`~sigma_db.partitions.windows.PartitionWindow` values, never from user text. The same
strings are executed by the maintenance run, printed by its dry run, and emitted by the
migration helper (so ``alembic upgrade --sql`` shows exactly what runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sigma_db.identifiers import quote
from sigma_db.partitions.declaration import PartitionedTable
from sigma_db.partitions.windows import (
    PartitionWindow,
    default_partition_name,
    partition_name,
    window_containing,
    windows_covering,
)

__all__ = [
    "DETACHED_COMMENT_PREFIX",
    "bound_literal",
    "create_default_sql",
    "create_partition_sql",
    "detach_sql",
    "detached_comment",
    "detached_comment_sql",
    "drop_sql",
    "initial_partition_statements",
    "initial_windows",
    "physical_schema",
    "qualified",
]


def physical_schema(logical: str | None, execution_options: Mapping[str, Any]) -> str | None:
    """The schema a table really lives in, after the engine's ``schema_translate_map``.

    ``None`` means the connection's default schema (first on its ``search_path``), which is
    where unqualified names resolve.
    """
    translate = execution_options.get("schema_translate_map") or {}
    return translate.get(logical, logical)


def qualified(schema: str | None, name: str) -> str:
    """``"schema"."name"``, or ``"name"`` for the connection's default schema."""
    return quote(name) if schema is None else f"{quote(schema)}.{quote(name)}"


def bound_literal(moment: datetime, *, key_is_date: bool) -> str:
    """A partition bound as SQL text.

    ``'2026-11-27'`` for a date key; for timestamptz an instant with an explicit ``+00``, so the
    session's TimeZone cannot move it. The year always has four digits: ``strftime``'s ``%Y``
    does not pad on glibc, and PostgreSQL reads ``'5-06-01'`` as another date.
    """
    utc = moment.astimezone(UTC)
    if key_is_date:
        return f"'{utc.date().isoformat()}'"
    return f"'{utc.year:04d}-{utc:%m-%d %H:%M:%S}+00'"


def create_partition_sql(
    partitioned: PartitionedTable, schema: str | None, window: PartitionWindow
) -> str:
    """``CREATE TABLE <child> PARTITION OF <parent> FOR VALUES FROM (...) TO (...)``."""
    lower = bound_literal(window.start, key_is_date=partitioned.key_is_date)
    upper = bound_literal(window.end, key_is_date=partitioned.key_is_date)
    return (
        f"CREATE TABLE {qualified(schema, partition_name(partitioned.name, window))} "
        f"PARTITION OF {qualified(schema, partitioned.name)} "
        f"FOR VALUES FROM ({lower}) TO ({upper})"
    )


def create_default_sql(partitioned: PartitionedTable, schema: str | None) -> str:
    """``CREATE TABLE <table>_default PARTITION OF <parent> DEFAULT``."""
    return (
        f"CREATE TABLE {qualified(schema, default_partition_name(partitioned.name))} "
        f"PARTITION OF {qualified(schema, partitioned.name)} DEFAULT"
    )


def detach_sql(
    parent: str, child: str, schema: str | None, *, concurrently: bool, finalize: bool = False
) -> str:
    """``ALTER TABLE <parent> DETACH PARTITION <child> [CONCURRENTLY | FINALIZE]``."""
    mode = " FINALIZE" if finalize else " CONCURRENTLY" if concurrently else ""
    return (
        f"ALTER TABLE {qualified(schema, parent)} DETACH PARTITION {qualified(schema, child)}{mode}"
    )


DETACHED_COMMENT_PREFIX = "sigma_db: detached partition of "
"""How the comment on a partition maintenance detaches starts.

Such a table is a plain table in the product's schema once detached; the migrations' autogenerate
filter (``sigma_db.migrations.autogenerate``) leaves tables with this comment alone, so neither
``alembic check`` nor ``--autogenerate`` proposes to drop the archived data (nor a partition
whose drop is still to come).
"""


def detached_comment(parent: str, *, to_drop: bool) -> str:
    """The comment marking a partition of ``parent`` before it is detached.

    ``(retention)``: kept by ``expired="detach"``, never dropped by maintenance.
    ``(expired: to drop)``: detached only to be dropped; should the run stop between the detach
    and the drop, the next run finds the table by this exact comment and drops it.
    """
    return f"{DETACHED_COMMENT_PREFIX}{parent} ({'expired: to drop' if to_drop else 'retention'})"


def detached_comment_sql(
    parent: str, child: str, schema: str | None, *, to_drop: bool = False
) -> str:
    """``COMMENT ON TABLE <child> IS 'sigma_db: detached partition of <parent> ...'``.

    Identifiers are checked by :func:`quote`, so the literal needs no further escaping.
    """
    quote(parent)
    return (
        f"COMMENT ON TABLE {qualified(schema, child)} IS "
        f"'{detached_comment(parent, to_drop=to_drop)}'"
    )


def drop_sql(child: str, schema: str | None) -> str:
    """``DROP TABLE <child>`` (a partition already detached, so the parent is not locked)."""
    return f"DROP TABLE {qualified(schema, child)}"


def initial_windows(partitioned: PartitionedTable, now: datetime) -> list[PartitionWindow]:
    """The windows a new table starts with: the current one and ``premake`` after it."""
    current = window_containing(partitioned.interval, now)
    last = current
    for _ in range(partitioned.partitioning.premake):
        last = last.next()
    return list(windows_covering(partitioned.interval, current.start, last.start))


def initial_partition_statements(
    partitioned: PartitionedTable, schema: str | None, now: datetime | None = None
) -> Iterator[str]:
    """DDL for a brand-new parent: the initial windows, then its DEFAULT partition (if declared).

    The DEFAULT partition comes last because each partition created while one exists must scan
    it (and lock it) to prove it holds no row for the new range.
    """
    for window in initial_windows(partitioned, now or datetime.now(UTC)):
        yield create_partition_sql(partitioned, schema, window)
    if partitioned.partitioning.default_partition:
        yield create_default_sql(partitioned, schema)
