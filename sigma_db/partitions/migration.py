"""Alembic and partitions: create the first partitions in the revision that creates the parent.

Keeping autogenerate off the child partitions is the migrations environment's job, not this
module's: :func:`sigma_db.migrations.run_migrations` (the product's ``env.py``) hides every
partition, its indexes and the per-partition copies of foreign keys through
:class:`sigma_db.migrations.AutogenerateScope` (alembic #539, #1787).

The parent is an ordinary model table: autogenerate renders ``op.create_table(...,
postgresql_partition_by='RANGE (observed_at)')`` from the model. In the same revision, right
after it, :func:`create_partitions` creates the DEFAULT partition and the partitions from now to
now + premake, so inserting today's rows works right after ``alembic upgrade head``; the
maintenance run keeps them going from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table

from sigma_db.errors import ConfigurationError
from sigma_db.partitions.ddl import initial_partition_statements, physical_schema
from sigma_db.partitions.declaration import (
    DatePartitioning,
    PartitionedTable,
    column_problems,
    partitioned_table,
)

if TYPE_CHECKING:
    from alembic.operations import Operations

__all__ = ["create_partitions"]


def create_partitions(
    op: Operations,
    target: Any,
    partitioning: DatePartitioning | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """In a revision: create the DEFAULT partition and the partitions for now .. now + premake.

    ``target`` is the ``DatePartitioned`` model, or the ``Table`` that ``op.create_table``
    returned together with its ``partitioning`` (which keeps the revision independent of
    later model changes). Offline (``--sql``) the statements are rendered for the time the SQL
    is generated. A ``partitioning`` the model mixin would refuse is refused here too, with the
    same messages, before any statement runs.
    """
    if partitioning is not None and isinstance(target, Table):
        partitioned = _checked(target, partitioning)
    else:
        partitioned = partitioned_table(target)
    context = op.get_context()
    options: Mapping[str, Any] = {}
    if not context.as_sql:
        options = op.get_bind().get_execution_options()
    schema = physical_schema(partitioned.table.schema, options)
    for statement in initial_partition_statements(partitioned, schema, now):
        op.execute(statement)


def _checked(table: Table, partitioning: object) -> PartitionedTable:
    """``table`` with ``partitioning``, checked as a model's ``__partitioning__`` is.

    A revision spells the declaration out instead of importing the model, so the mixin's check
    at class definition never sees it: without this, ``interval="daily"`` surfaced as a bare
    ``ValueError`` and ``premake=0`` was accepted.
    """
    where = f"create_partitions(op, {table.name}, ...)"
    if not isinstance(partitioning, DatePartitioning):
        raise ConfigurationError(
            f"{where}: partitioning must be a DatePartitioning, not "
            f"{type(partitioning).__name__}; pass e.g. "
            "DatePartitioning(column='observed_at', interval='day', premake=7)."
        )
    problems = partitioning.problems()
    if isinstance(partitioning.column, str) and partitioning.column:
        problems += column_problems(table, partitioning, declared_by="the partitioning")
    if len(problems) == 1:
        raise ConfigurationError(f"{where}: {problems[0]}.")
    if problems:
        raise ConfigurationError(
            [f"{problem}." for problem in problems],
            heading=f"{where}: its partitioning has {len(problems)} problems:",
        )
    return PartitionedTable(table, partitioning)
