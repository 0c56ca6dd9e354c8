"""Bad partition declarations fail at class definition, naming the class and the fix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import TIMESTAMP, Date, DateTime, Index, String, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable

from sigma_db import ConfigurationError, DatePartitioned, DatePartitioning
from sigma_db.models import IdentityPrimaryKey, ProductBase
from sigma_db.partitions import DEFAULT_RETENTION, Interval, partitioned_table
from sigma_db.partitions.examples import AuditLog, Signal


def fresh_base() -> type[Any]:
    class Base(ProductBase, DeclarativeBase):
        pass

    return Base


def define(partitioning: DatePartitioning, **columns: Any) -> type[Any]:
    """Define a model ``Reading`` with ``columns`` (default: a timestamptz key in the PK)."""
    base = fresh_base()
    namespace: dict[str, Any] = {"__partitioning__": partitioning, "__annotations__": {}}
    if not columns:
        columns = {"taken_at": mapped_column(TIMESTAMP(timezone=True), primary_key=True)}
    namespace.update(columns)
    return type("Reading", (DatePartitioned, IdentityPrimaryKey, base), namespace)


def test_good_declaration_emits_partition_by_range() -> None:
    model = define(DatePartitioning(column="taken_at", interval="week"))
    ddl = str(CreateTable(model.__table__).compile(dialect=postgresql.dialect()))
    assert 'PARTITION BY RANGE ("taken_at")' in ddl
    assert "PRIMARY KEY (id, taken_at)" in ddl
    partitioned = partitioned_table(model)
    assert partitioned.interval is Interval.WEEK
    assert not partitioned.key_is_date


def test_date_column_is_accepted() -> None:
    model = define(
        DatePartitioning(column="day", interval="month"),
        day=mapped_column(Date, primary_key=True),
    )
    assert partitioned_table(model).key_is_date


def test_missing_column() -> None:
    with pytest.raises(ConfigurationError) as caught:
        define(DatePartitioning(column="observed_at"))
    message = str(caught.value)
    assert message.startswith("Model class Reading:")
    assert "no such column" in message
    assert "observed_at: Mapped[datetime]" in message  # the fix
    assert "taken_at" in message  # what it has


def test_naive_timestamp_column() -> None:
    with pytest.raises(
        ConfigurationError, match=r"Reading.*without time zone.*TIMESTAMP\(timezone=True\)"
    ):
        define(
            DatePartitioning(column="taken_at"),
            taken_at=mapped_column(DateTime, primary_key=True),
        )


def test_wrong_column_type() -> None:
    with pytest.raises(ConfigurationError, match=r"Reading.*'taken_at' has type.*Date"):
        define(
            DatePartitioning(column="taken_at"),
            taken_at=mapped_column(String(20), primary_key=True),
        )


def test_interval_not_in_the_list() -> None:
    with pytest.raises(
        ConfigurationError, match=r"Reading: interval 'hour' is not one of 'day', 'week', 'month'"
    ):
        define(DatePartitioning(column="taken_at", interval="hour"))


def test_retention_shorter_than_the_interval() -> None:
    with pytest.raises(ConfigurationError) as caught:
        define(
            DatePartitioning(
                column="taken_at", interval="month", retention={"dev": timedelta(days=7)}
            )
        )
    message = str(caught.value)
    assert "Reading" in message
    assert "retention for dev (7 days) is shorter than one month partition" in message
    assert "at least 31 days" in message


def test_pk_without_the_partition_column() -> None:
    with pytest.raises(ConfigurationError) as caught:
        define(
            DatePartitioning(column="taken_at"),
            taken_at=mapped_column(TIMESTAMP(timezone=True)),
        )
    message = str(caught.value)
    assert "Model class Reading: primary key (id) does not include the partition column" in message
    assert "primary_key=True" in message


def test_unique_constraint_and_index_without_the_partition_column() -> None:
    with pytest.raises(ConfigurationError) as caught:
        define(
            DatePartitioning(column="taken_at"),
            taken_at=mapped_column(TIMESTAMP(timezone=True), primary_key=True),
            code=mapped_column(String(10)),
            label=mapped_column(String(10)),
            __table_args__=(
                UniqueConstraint("code"),
                Index(None, "label", unique=True),
            ),
        )
    message = str(caught.value)
    assert "Reading: its partitioning has 2 problems" in message
    assert "unique constraint on (code)" in message
    assert "unique index" in message


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ConfigurationError) as caught:
        define(
            DatePartitioning(
                column="taken_at",
                interval="fortnight",
                premake=0,
                expired="archive",  # type: ignore[arg-type]
                retention={"qa": timedelta(days=3)},
            )
        )
    message = str(caught.value)
    assert message.startswith("Model class Reading: its partitioning has 4 problems:")
    for part in ("'fortnight'", "premake=0", "'archive'", "'qa' is not an environment"):
        assert part in message


def test_missing_declaration() -> None:
    base = fresh_base()
    with pytest.raises(ConfigurationError, match="sets no __partitioning__"):
        type(
            "Reading",
            (DatePartitioned, IdentityPrimaryKey, base),
            {"taken_at": mapped_column(TIMESTAMP(timezone=True), primary_key=True)},
        )


def test_explicit_partition_by_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="remove it, __partitioning__ sets it"):
        define(
            DatePartitioning(column="taken_at"),
            taken_at=mapped_column(TIMESTAMP(timezone=True), primary_key=True),
            __table_args__={"postgresql_partition_by": "RANGE (taken_at)"},
        )


def test_retention_defaults_and_overrides() -> None:
    declared = DatePartitioning(column="x", retention={"prod": None})
    assert declared.retention_for("dev") == DEFAULT_RETENTION["dev"]  # type: ignore[index]
    assert declared.retention_for("prod") is None  # keep forever
    every = DatePartitioning(column="x", retention=timedelta(days=90))
    assert {every.retention_for(env) for env in ("dev", "staging", "prod")} == {timedelta(90)}
    # the defaults fit every interval
    for interval in Interval:
        assert DatePartitioning(column="x", interval=interval).problems() == []


def test_examples_are_valid() -> None:
    assert partitioned_table(Signal).interval is Interval.DAY
    assert partitioned_table(AuditLog).interval is Interval.MONTH
    assert Signal.__table__.name == "signals"
    assert AuditLog.__table__.name == "audit_logs"
    assert partitioned_table(Signal).partitioning.retention_for("dev") == timedelta(days=7)


def test_not_a_partitioned_model() -> None:
    base = fresh_base()

    class Pack(IdentityPrimaryKey, base):  # type: ignore[misc, valid-type]
        name: Mapped[str]

    with pytest.raises(ConfigurationError, match="Pack is not a date-partitioned model"):
        partitioned_table(Pack)
