"""Bulk ingest through PostgreSQL's COPY, from a SQLAlchemy Session or Connection.

COPY streams rows in one statement, and on a partitioned table the server routes each row to
its partition (or to DEFAULT), so a batch spanning several days needs nothing special. Binary
COPY with the column types read from the catalog skips text parsing on the server and never
guesses a type on the client (``int4`` vs ``int8``, ``jsonb``...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
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
    defaults to :func:`default_copy_columns`. A mapping without a key gets the column's
    Python-side ``default=`` (a scalar, or a callable taking no context such as ``dict``), as an
    ORM insert would; a key missing with no such default is an error. The rows join the
    connection's (or session's) current transaction, starting one if needed: commit it as usual.
    ``binary=False`` uses text COPY, for values whose Python type has no binary dumper; either
    way the values are dumped for the columns' catalog types (a ``dict`` for ``jsonb``...).

    A value that cannot be written (a naive ``datetime`` for a ``timestamptz`` column, a wrong
    type) raises :class:`~sigma_db.ConfigurationError` naming the row and column; the
    transaction is then aborted: roll it back.
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
    if binary:
        statement += " (FORMAT BINARY)"
    fill = _defaults(table, names)
    count = 0
    with driver.cursor() as cursor:
        oids = _column_types(cursor, target, names)
        # Text COPY sends a naive datetime as it is and the server reads it in the session's
        # TimeZone: checked here (binary COPY refuses it by itself).
        naive_checked = [
            index for index, oid in enumerate(oids) if oid == _TIMESTAMPTZ_OID and not binary
        ]
        values: Sequence[Any] = ()
        try:
            with cursor.copy(statement) as copy:
                copy.set_types(oids)
                write = copy.write_row
                for row in rows:
                    values = _values(row, names, fill, count) if isinstance(row, Mapping) else row
                    for index in naive_checked:
                        if _is_naive(values[index]):
                            raise TypeError("naive datetime")
                    write(values)
                    count += 1
        except (TypeError, ValueError, psycopg.DataError, psycopg.ProgrammingError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise _bad_row(target, names, oids, count, values, exc) from exc
    return count


_TIMESTAMPTZ_OID = 1184
_MISSING = object()


def _defaults(table: Table, names: Sequence[str]) -> dict[str, Callable[[], Any]]:
    """Column name -> a maker of its Python-side default, for the columns that have one."""
    found: dict[str, Callable[[], Any]] = {}
    for name in names:
        default = table.c[name].default
        if default is None:
            continue
        arg = getattr(default, "arg", None)
        if getattr(default, "is_scalar", False):
            found[name] = _constant(arg)
        elif getattr(default, "is_callable", False) and callable(arg):
            found[name] = _called(arg)
    return found


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _called(make: Callable[[Any], Any]) -> Callable[[], Any]:
    # SQLAlchemy wraps a no-argument default (``dict``) to take the execution context.
    return lambda: make(None)


def _values(
    row: Mapping[str, Any], names: Sequence[str], fill: Mapping[str, Callable[[], Any]], at: int
) -> list[Any]:
    values: list[Any] = []
    for name in names:
        value = row.get(name, _MISSING)
        if value is _MISSING:
            make = fill.get(name)
            if make is None:
                raise ConfigurationError(
                    f"copy_rows: row {at} has no {name!r} and the column has no Python-side "
                    "default; give every row a value for it, or leave it out of columns=..."
                )
            value = make()
        values.append(value)
    return values


def _is_naive(value: Any) -> bool:
    return isinstance(value, datetime) and value.tzinfo is None


def _bad_row(
    target: str,
    names: Sequence[str],
    oids: Sequence[int],
    at: int,
    values: Sequence[Any],
    exc: BaseException,
) -> ConfigurationError:
    for name, oid, value in zip(names, oids, values, strict=False):
        if oid == _TIMESTAMPTZ_OID and _is_naive(value):
            return ConfigurationError(
                f"copy_rows into {target}: row {at}, column {name}: naive datetime {value!r}; "
                "timestamptz needs an aware one, e.g. datetime(..., tzinfo=UTC)"
            )
    reason = " ".join(str(exc).split())
    return ConfigurationError(
        f"copy_rows into {target}: row {at} ({', '.join(names)}) cannot be written: {reason}"
    )


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
