"""Helpers for revision files: the safe way to do what plain Alembic ops make easy to do unsafely.

* :func:`area` — the physical schema of a logical area (``audit`` → ``lab_audit`` in the
  consolidated dev database), so one revision file migrates both layouts.
* :func:`create_index_concurrently` / :func:`drop_index_concurrently` — outside the revision's
  transaction (``autocommit_block``), idempotent (``IF [NOT] EXISTS``), and a half-built invalid
  index left by an earlier failed attempt is dropped first. Give them a revision of their own.
* :func:`run_in_batches` — a backfill that commits every batch, so it holds row locks briefly and
  resumes where it stopped when re-run.
* :func:`lint_ignore` — accept one lint finding on the next statement, with a reason.

Each checks ``is_offline_mode`` before touching data: in ``--sql`` mode there is no database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic import context, op
from sqlalchemy import text
from sqlalchemy.sql.elements import TextClause

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import quote
from sigma_db.topology import Topology

__all__ = [
    "area",
    "create_area_schema",
    "create_index_concurrently",
    "drop_index_concurrently",
    "lint_ignore",
    "run_in_batches",
]

TOPOLOGY_KEY = "sigma_db.topology"
IGNORE_MARK = "-- sigma-db: lint-ignore "

_INVALID_INDEX = text(
    """
    SELECT NOT i.indisvalid
    FROM pg_catalog.pg_index AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
    WHERE c.relname = :name
      AND c.relnamespace = coalesce(to_regnamespace(:schema), current_schema()::regnamespace)
    """
)


def _topology() -> Topology:
    found = context.config.attributes.get(TOPOLOGY_KEY)
    if not isinstance(found, Topology):
        raise ConfigurationError(
            "sigma_db.migrations.ops need the sigma_db environment: migrations/env.py must call "
            "sigma_db.migrations.run_migrations(metadata)."
        )
    return found


def area(logical: str | None = None) -> str:
    """Physical schema for a logical area (``None``: the default schema) in this database."""
    return _topology().physical_schema(logical)


def create_area_schema(logical: str) -> None:
    """``CREATE SCHEMA IF NOT EXISTS`` for a logical area (``audit``) under its physical name."""
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(area(logical))}")


def create_index_concurrently(
    index_name: str,
    table_name: str,
    columns: Sequence[Any],
    *,
    schema: str | None = None,
    unique: bool = False,
    **kw: Any,
) -> None:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS``, outside the transaction; retry-safe."""
    migration = op.get_context()
    with migration.autocommit_block():
        if not context.is_offline_mode():
            invalid = op.get_bind().execute(_INVALID_INDEX, {"name": index_name, "schema": schema})
            if invalid.scalar() is True:
                _drop_concurrently(index_name, table_name, schema)
        op.create_index(
            index_name,
            table_name,
            list(columns),
            schema=schema,
            unique=unique,
            postgresql_concurrently=True,
            if_not_exists=True,
            **kw,
        )


def drop_index_concurrently(index_name: str, table_name: str, *, schema: str | None = None) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS``, outside the transaction (a contract step)."""
    with op.get_context().autocommit_block():
        _drop_concurrently(index_name, table_name, schema)


def _drop_concurrently(index_name: str, table_name: str, schema: str | None) -> None:
    op.drop_index(
        index_name,
        table_name=table_name,
        schema=schema,
        postgresql_concurrently=True,
        if_exists=True,
    )


def run_in_batches(statement: str | TextClause, *, batch_size: int = 1000) -> int:
    """Run ``statement`` until it changes no row, committing after each run; return rows changed.

    ``statement`` changes at most ``:batch_size`` rows per run and skips rows already done, e.g.
    ``UPDATE signals SET title = name WHERE id IN (SELECT id FROM signals WHERE title IS NULL
    AND name IS NOT NULL LIMIT :batch_size)``. Offline, it is rendered once with a comment.
    """
    if batch_size < 1:
        raise ConfigurationError(
            f"batch_size={batch_size}: use a whole number of rows, at least 1."
        )
    clause = text(statement) if isinstance(statement, str) else statement
    if "batch_size" not in clause.compile().params:
        raise ConfigurationError(
            "run_in_batches: the statement must limit itself with :batch_size, e.g. "
            "'... WHERE id IN (SELECT id FROM t WHERE new IS NULL LIMIT :batch_size)'."
        )
    migration = op.get_context()
    with migration.autocommit_block():
        if context.is_offline_mode():
            migration.impl.static_output("-- sigma-db: repeat until it changes 0 rows")
            op.execute(clause.bindparams(batch_size=batch_size))
            return 0
        total = 0
        while True:
            changed = op.get_bind().execute(clause, {"batch_size": batch_size}).rowcount
            if changed <= 0:
                return total
            total += changed


def lint_ignore(*rules: str, reason: str) -> None:
    """Accept the named lint finding(s) on the next statement; ``reason`` is mandatory.

    The ignore lives in the rendered SQL as a comment, so reviewers see it beside the statement.
    """
    reason = " ".join(reason.split())
    if not rules or not reason:
        raise ConfigurationError(
            "lint_ignore needs at least one rule and a reason, e.g. "
            "lint_ignore('require-concurrent-index-creation', reason='table is empty here')."
        )
    if context.is_offline_mode():
        op.get_context().impl.static_output(f"{IGNORE_MARK}{','.join(rules)} -- {reason}")
