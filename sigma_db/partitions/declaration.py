"""Declaring a date-partitioned model: one ``__partitioning__`` line, checked at class definition.

::

    class Signal(DatePartitioned, IdentityPrimaryKey, Base):
        __partitioning__ = DatePartitioning(
            column="observed_at", interval="day", premake=7,
            retention={"dev": timedelta(days=7), "prod": timedelta(days=400)},
        )
        observed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)

Everything about the table's partitioning lives in that one declaration: the maintenance run,
the migration helper, ``metadata.create_all`` and the COPY helper read it from
``table.info``, so there is no second place to keep in sync. A declaration PostgreSQL would
reject later (a key without the partition column, a naive timestamp, an unknown interval...)
fails when the class is defined, with one message naming the class and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Final, Literal

from sqlalchemy import Column, Date, DateTime, Index, Table, UniqueConstraint, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, DeclarativeBaseNoMeta

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import quote
from sigma_db.partitions.windows import Interval
from sigma_db.topology import Environment

__all__ = [
    "DEFAULT_PREMAKE",
    "DEFAULT_RETENTION",
    "DatePartitioned",
    "DatePartitioning",
    "ExpiredPolicy",
    "PartitionedTable",
    "column_problems",
    "partitioned_table",
]

ExpiredPolicy = Literal["drop", "detach"]

DEFAULT_PREMAKE: Final = 7
"""Future partitions kept ready: a week of daily partitions survives a broken cron job."""

DEFAULT_RETENTION: Final[Mapping[Environment, timedelta | None]] = {
    Environment.DEV: timedelta(days=31),
    Environment.STAGING: timedelta(days=92),
    Environment.PROD: timedelta(days=400),
}
"""Retention when a declaration does not say: a month in dev, a quarter in staging, 400 days in
prod (a year plus a margin for year-over-year queries). Each is at least one month, so the
defaults fit every interval."""

INFO_KEY: Final = "sigma_db.partitioning"
"""Key in ``Table.info`` under which the checked declaration is kept."""

_DECLARATIVE_BASES = (DeclarativeBase, DeclarativeBaseNoMeta)
_EXPIRED = ("drop", "detach")


@dataclass(frozen=True, kw_only=True)
class DatePartitioning:
    """How one table is partitioned by date, and how long its partitions live.

    The constructor accepts what people naturally write (``interval="day"``, retention keyed
    by ``"prod"``) and never raises: the model class that uses it checks it, so that a problem
    is reported with the class's name and all at once.
    """

    column: str
    """The partition key: a ``timestamptz`` (``TIMESTAMP(timezone=True)``) or ``date`` column
    that is part of the primary key."""
    interval: Interval | str = Interval.DAY
    """``day``, ``week`` (ISO weeks, starting Monday) or ``month``; boundaries are UTC."""
    premake: int = DEFAULT_PREMAKE
    """How many future partitions, after the current one, maintenance keeps ready."""
    retention: Mapping[Environment | str, timedelta | None] | timedelta | None = None
    """How long data is kept, per environment (``DB_ENV``). A mapping overrides
    :data:`DEFAULT_RETENTION` per environment (``None`` = keep forever); a single
    ``timedelta`` applies to every environment; ``None`` keeps the defaults."""
    expired: ExpiredPolicy = "drop"
    """What happens to a partition wholly older than the retention: ``drop`` it, or ``detach``
    it and keep it as a plain table (to archive, then drop by hand)."""
    default_partition: bool = True
    """Keep a DEFAULT partition that catches rows no partition covers (instead of failing the
    insert). Without one, retention can detach ``CONCURRENTLY``; see the partitioning guide."""

    _retention: Mapping[Environment, timedelta | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if isinstance(self.interval, str) and self.interval in Interval._value2member_map_:
            object.__setattr__(self, "interval", Interval(self.interval))
        resolved: dict[Environment, timedelta | None] = dict(DEFAULT_RETENTION)
        if isinstance(self.retention, timedelta):
            resolved = dict.fromkeys(Environment, self.retention)
        elif isinstance(self.retention, Mapping):
            for key, value in self.retention.items():
                if isinstance(key, str) and key in Environment._value2member_map_:
                    resolved[Environment(key)] = value
        object.__setattr__(self, "_retention", resolved)

    @property
    def interval_kind(self) -> Interval:
        """The interval as an :class:`Interval` (valid once the model class is defined)."""
        return Interval(self.interval)

    def retention_for(self, environment: Environment | str) -> timedelta | None:
        """How long partitions live in ``environment``; ``None`` means they never expire."""
        return self._retention[Environment(environment)]

    def problems(self) -> list[str]:
        """What is wrong with the declaration itself (no table needed); empty when it is fine."""
        problems: list[str] = []
        if not isinstance(self.column, str) or not self.column:
            problems.append("column must name the partition key column, e.g. column='observed_at'")
        if not isinstance(self.interval, Interval):
            allowed = ", ".join(repr(i.value) for i in Interval)
            problems.append(f"interval {self.interval!r} is not one of {allowed}; pick one")
        if isinstance(self.premake, bool) or not isinstance(self.premake, int):
            problems.append(f"premake {self.premake!r} must be a whole number, e.g. premake=7")
        elif self.premake < 1:
            problems.append(
                f"premake={self.premake}: keep at least 1 future partition ready, or rows "
                "written just after the boundary land in the DEFAULT partition; use premake>=1"
            )
        if self.expired not in _EXPIRED:
            problems.append(f"expired {self.expired!r} must be 'drop' or 'detach'")
        default_partition: object = self.default_partition  # people pass anything
        if not isinstance(default_partition, bool):
            problems.append("default_partition must be True or False")
        problems.extend(self._retention_problems())
        return problems

    def _retention_problems(self) -> list[str]:
        retention: object = self.retention
        if retention is None or isinstance(retention, timedelta):
            raw: Mapping[Any, Any] = {} if retention is None else {"every environment": retention}
        elif isinstance(retention, Mapping):
            raw = retention
        else:
            return [
                f"retention {retention!r} must be a timedelta or a mapping of environment to "
                "timedelta, e.g. retention={'dev': timedelta(days=7), 'prod': timedelta(days=400)}"
            ]
        problems: list[str] = []
        envs = ", ".join(e.value for e in Environment)
        for key, value in raw.items():
            if key != "every environment" and key not in Environment._value2member_map_:
                problems.append(f"retention key {key!r} is not an environment; use {envs}")
                continue
            if value is None:
                continue
            if not isinstance(value, timedelta):
                problems.append(
                    f"retention for {key} is {value!r}; give a timedelta, e.g. timedelta(days=30)"
                    " (or None to keep forever)"
                )
                continue
            if isinstance(self.interval, Interval) and value < self.interval.longest:
                problems.append(
                    f"retention for {key} ({_days(value)}) is shorter than one {self.interval} "
                    f"partition (up to {_days(self.interval.longest)}); partitions are dropped "
                    f"whole, so keep at least {_days(self.interval.longest)} or choose a shorter "
                    "interval"
                )
        return problems


@dataclass(frozen=True)
class PartitionedTable:
    """A table together with its checked declaration: what every partition tool works from."""

    table: Table
    partitioning: DatePartitioning

    @property
    def name(self) -> str:
        """The parent table's name."""
        return self.table.name

    @property
    def column(self) -> Column[Any]:
        """The partition key column."""
        return self.table.c[self.partitioning.column]

    @property
    def key_is_date(self) -> bool:
        """Whether the key is a ``date`` (bounds ``'2026-11-27'``) rather than ``timestamptz``."""
        return not isinstance(self.column.type, DateTime)

    @property
    def interval(self) -> Interval:
        """The partition interval."""
        return self.partitioning.interval_kind


def partitioned_table(model_or_table: Any) -> PartitionedTable:
    """The :class:`PartitionedTable` for a ``DatePartitioned`` model or its ``Table``."""
    table = model_or_table if isinstance(model_or_table, Table) else None
    if table is None:
        table = getattr(model_or_table, "__table__", None)
    declaration = table.info.get(INFO_KEY) if isinstance(table, Table) else None
    if not isinstance(table, Table) or not isinstance(declaration, DatePartitioning):
        name = getattr(model_or_table, "__name__", None) or repr(model_or_table)
        raise ConfigurationError(
            f"{name} is not a date-partitioned model; declare it as "
            f"class {name}(DatePartitioned, ..., Base) with __partitioning__ = "
            "DatePartitioning(column=..., interval=...)."
        )
    return PartitionedTable(table, declaration)


class DatePartitioned:
    """Mixin for a model partitioned by date; the class sets ``__partitioning__``.

    At class definition it checks the declaration against the mapped table and raises one
    :class:`~sigma_db.ConfigurationError` naming the class, each problem and its fix. It then
    makes the table ``PARTITION BY RANGE (<column>)`` and has ``metadata.create_all`` create the
    DEFAULT partition and the partitions from now to now + premake (migrations use
    :func:`sigma_db.partitions.create_partitions` instead).

    Indexes declared on the model are created on the parent, and PostgreSQL creates a matching
    index on every partition, present and future.
    """

    __partitioning__: ClassVar[DatePartitioning]

    def __init_subclass__(cls, **kw: Any) -> None:
        if not issubclass(cls, _DECLARATIVE_BASES) or cls.__dict__.get("__abstract__", False):
            super().__init_subclass__(**kw)
            return
        declaration = getattr(cls, "__partitioning__", None)
        if not isinstance(declaration, DatePartitioning):
            _raise(
                cls,
                [
                    "it uses DatePartitioned but sets no __partitioning__; add e.g. "
                    "__partitioning__ = DatePartitioning(column='observed_at', interval='day')"
                ],
            )
        assert isinstance(declaration, DatePartitioning)
        _raise(cls, declaration.problems())
        super().__init_subclass__(**kw)
        table = cls.__dict__.get("__table__")
        if not isinstance(table, Table):  # single-table inheritance: the parent's table
            return
        _raise(cls, _table_problems(table, declaration))
        table.dialect_options["postgresql"]["partition_by"] = f"RANGE ({quote(declaration.column)})"
        table.info[INFO_KEY] = declaration
        event.listen(table, "after_create", _create_initial_partitions)


def column_problems(
    table: Table, declaration: DatePartitioning, *, declared_by: str = "__partitioning__"
) -> list[str]:
    """What is wrong with the partition column of ``table``: missing, or not timestamptz/date.

    The model mixin and :func:`~sigma_db.partitions.create_partitions` (which takes a bare
    ``Table``) both check this; ``declared_by`` is what the message says names the column.
    """
    name = declaration.column
    column = table.c.get(name)
    if column is None:
        known = ", ".join(c.name for c in table.columns)
        return [
            f"{declared_by} names column {name!r}, but table {table.name} has no such column "
            f"(it has: {known}); add it, e.g. {name}: Mapped[datetime] = "
            "mapped_column(TIMESTAMP(timezone=True), primary_key=True), or fix column=..."
        ]
    kind = column.type
    if isinstance(kind, DateTime) and not kind.timezone:
        return [
            f"partition column {name!r} is a timestamp without time zone; boundaries are UTC "
            "instants, so declare it mapped_column(TIMESTAMP(timezone=True), ...)"
        ]
    if not isinstance(kind, DateTime | Date):
        return [
            f"partition column {name!r} has type {kind!r}; use TIMESTAMP(timezone=True) "
            "(timestamptz) or Date"
        ]
    return []


def _table_problems(table: Table, declaration: DatePartitioning) -> list[str]:
    name = declaration.column
    problems = column_problems(table, declaration)
    if table.c.get(name) is None:
        return problems
    key = [c.name for c in table.primary_key.columns]
    if name not in key:
        problems.append(
            f"primary key ({', '.join(key) or 'none'}) does not include the partition column "
            f"{name!r}; PostgreSQL requires it on a partitioned table: mark {name} "
            "primary_key=True too (the key becomes composite)"
        )
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint) and name not in constraint.columns:
            cols = ", ".join(c.name for c in constraint.columns)
            problems.append(
                f"unique constraint on ({cols}) does not include the partition column {name!r}; "
                f"add {name} to it (PostgreSQL cannot enforce uniqueness across partitions)"
            )
    for index in table.indexes:
        if _is_unique(index) and name not in {getattr(e, "name", None) for e in index.expressions}:
            problems.append(
                f"unique index {index.name or ''} does not include the partition column "
                f"{name!r}; add {name} to it (PostgreSQL cannot enforce uniqueness across "
                "partitions)"
            )
    if table.dialect_options["postgresql"]["partition_by"] is not None:
        problems.append(
            "__table_args__ sets postgresql_partition_by; remove it, __partitioning__ sets it"
        )
    return problems


def _is_unique(index: Index) -> bool:
    return bool(index.unique)


def _raise(cls: type[Any], problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise ConfigurationError(f"Model class {cls.__name__}: {problems[0]}.")
    raise ConfigurationError(
        [f"{problem}." for problem in problems],
        heading=f"Model class {cls.__name__}: its partitioning has {len(problems)} problems:",
    )


def _days(value: timedelta) -> str:
    if value % timedelta(days=1):
        return str(value)
    days = value.days
    return f"{days} day" if days == 1 else f"{days} days"


def _create_initial_partitions(target: Table, connection: Connection, **_: Any) -> None:
    """``after_create``: the DEFAULT partition and now .. now + premake, for ``create_all``."""
    from sigma_db.partitions.ddl import initial_partition_statements, physical_schema

    partitioned = partitioned_table(target)
    schema = physical_schema(target.schema, connection.get_execution_options())
    for statement in initial_partition_statements(partitioned, schema):
        connection.exec_driver_sql(statement)
