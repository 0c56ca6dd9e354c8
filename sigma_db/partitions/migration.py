"""Alembic and partitions: keep autogenerate off the children, create the first ones in a revision.

Autogenerate compares the model's tables with the database. Child partitions exist only in the
database, so without a filter it proposes to drop every one of them and their indexes
(alembic #539), and reflecting foreign keys between partitioned tables through their
partitions has crashed ``alembic check`` (alembic #1787). :func:`exclude_partitions` builds the
filter from ``pg_class.relispartition``: partitions are never reflected at all.

The parent is an ordinary model table: autogenerate renders ``op.create_table(...,
postgresql_partition_by='RANGE (observed_at)')`` from the model. In the same revision, right
after it, :func:`create_partitions` creates the DEFAULT partition and the partitions from now to
now + premake, so inserting today's rows works right after ``alembic upgrade head``; the
maintenance run keeps them going from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from sigma_db.partitions.ddl import initial_partition_statements, physical_schema
from sigma_db.partitions.declaration import DatePartitioning, PartitionedTable, partitioned_table

if TYPE_CHECKING:
    from alembic.operations import Operations

__all__ = ["PartitionFilter", "create_partitions", "exclude_partitions"]


@dataclass(frozen=True)
class PartitionFilter:
    """Alembic ``include_name`` / ``include_object`` hooks that hide child partitions.

    Pass both to ``context.configure(...)``: ``include_name`` keeps partitions from being
    reflected (which is what avoids alembic #1787), ``include_object`` catches anything reflected
    another way (indexes and foreign keys that belong to a partition).
    """

    partitions: frozenset[tuple[str, str]]
    """(schema, table) of every partition in the database when the filter was built."""
    default_schema: str

    def is_partition(self, name: str | None, schema: str | None) -> bool:
        """Whether ``schema.name`` (``None``: the default schema) is a child partition."""
        if name is None:
            return False
        return (schema or self.default_schema, name) in self.partitions

    def include_name(self, name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        """Alembic ``include_name``: skip tables that are partitions (nothing else changes)."""
        if type_ == "table":
            return not self.is_partition(name, parent_names.get("schema_name"))
        return True

    def include_object(
        self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        """Alembic ``include_object``: skip partitions and their indexes and constraints."""
        if not reflected:
            return True
        if type_ == "table":
            return not self.is_partition(name, obj.schema)
        table = getattr(obj, "table", None)
        if isinstance(table, Table) and self.is_partition(table.name, table.schema):
            return False
        if type_ == "foreign_key_constraint":
            # A foreign key to a partitioned table is stored once per referenced partition too;
            # SQLAlchemy reflects those copies on the parent, pointing at the partitions.
            for element in obj.elements:
                *schema, referred, _column = element.target_fullname.split(".")
                if self.is_partition(referred, schema[-1] if schema else None):
                    return False
        return True


def exclude_partitions(connection: Connection) -> PartitionFilter:
    """Build a :class:`PartitionFilter` from the live catalog (run it in ``env.py``, online).

    It leaves the connection as it found it: reading the catalog would otherwise autobegin a
    transaction, and Alembic's ``begin_transaction()`` then assumes the caller owns it and never
    commits the migrations.
    """
    had_transaction = connection.in_transaction()
    rows = connection.exec_driver_sql(
        "SELECT n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relispartition"
    ).all()
    default_schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
    if not had_transaction:
        connection.rollback()
    return PartitionFilter(frozenset((str(s), str(t)) for s, t in rows), str(default_schema))


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
    is generated.
    """
    if partitioning is not None and isinstance(target, Table):
        partitioned = PartitionedTable(target, partitioning)
    else:
        partitioned = partitioned_table(target)
    context = op.get_context()
    options: Mapping[str, Any] = {}
    if not context.as_sql:
        options = op.get_bind().get_execution_options()
    schema = physical_schema(partitioned.table.schema, options)
    for statement in initial_partition_statements(partitioned, schema, now):
        op.execute(statement)
