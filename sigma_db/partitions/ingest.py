"""Bulk ingest through PostgreSQL's COPY, from a SQLAlchemy Session or Connection.

COPY streams rows in one statement, and on a partitioned table the server routes each row to
its partition (or to DEFAULT), so a batch spanning several days needs nothing special. Binary
COPY with the column types read from the catalog skips text parsing on the server and never
guesses a type on the client (``int4`` vs ``int8``, ``jsonb``...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import quote
from sigma_db.partitions.ddl import physical_schema, qualified

__all__ = ["copy_rows", "default_copy_columns"]


def default_copy_columns(table: Table) -> list[str]:
    """The columns :func:`copy_rows` fills by default: all but identity and server-default ones.

    Those are the values the application provides; the database fills the rest (``id``,
    ``created_at``...), as it does for an ORM insert.
    """
    return [
        column.name
        for column in table.columns
        if column.identity is None and column.server_default is None
    ]


def copy_rows(
    connection: Connection | Session,
    model_or_table: Any,
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    binary: bool = True,
) -> int:
    """COPY ``rows`` into the model's table; return how many were written.

    ``rows`` are tuples in ``columns`` order, or mappings keyed by column name. ``columns``
    defaults to :func:`default_copy_columns`. The rows join the connection's (or session's)
    current transaction, starting one if needed: commit it as usual. ``binary=False`` uses text
    COPY, for values whose Python type has no binary dumper.
    """
    table = model_or_table if isinstance(model_or_table, Table) else None
    if table is None:
        table = getattr(model_or_table, "__table__", None)
    if not isinstance(table, Table):
        raise ConfigurationError(
            f"copy_rows needs a mapped model class or a Table, not {model_or_table!r}."
        )
    names = list(columns) if columns is not None else default_copy_columns(table)
    unknown = [name for name in names if name not in table.c]
    if unknown or not names:
        raise ConfigurationError(
            f"copy_rows into {table.name}: columns {unknown or names} are not columns of the table "
            f"({', '.join(table.c.keys())}); fix columns=..."
        )
    sa_connection = connection.connection() if isinstance(connection, Session) else connection
    if not sa_connection.in_transaction():
        sa_connection.begin()
    driver = sa_connection.connection.driver_connection
    assert driver is not None
    schema = physical_schema(table.schema, sa_connection.get_execution_options())
    target = qualified(schema, table.name)
    column_list = ", ".join(quote(name) for name in names)
    statement = f"COPY {target} ({column_list}) FROM STDIN"
    count = 0
    with driver.cursor() as cursor:
        oids: list[int] = []
        if binary:
            statement += " (FORMAT BINARY)"
            oids = _column_types(cursor, target, names)
        with cursor.copy(statement) as copy:
            if binary:
                copy.set_types(oids)
            write = copy.write_row
            for row in rows:
                if isinstance(row, Mapping):
                    write([row[name] for name in names])
                else:
                    write(row)
                count += 1
    return count


def _column_types(cursor: Any, target: str, names: list[str]) -> list[int]:
    found = dict(
        cursor.execute(
            "SELECT attname, atttypid::int FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (target,),
        ).fetchall()
    )
    missing = [name for name in names if name not in found]
    if missing:
        raise ConfigurationError(
            f"copy_rows: table {target} in the database lacks columns {missing}; is the schema "
            "migrated (alembic upgrade head)?"
        )
    return [found[name] for name in names]
