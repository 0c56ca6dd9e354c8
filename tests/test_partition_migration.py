"""``create_partitions`` in a revision: a bad partitioning is one clear error, as on a model."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from sigma_db import ConfigurationError
from sigma_db.partitions import DatePartitioning, create_partitions

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def offline() -> tuple[Operations, io.StringIO]:
    """``alembic upgrade --sql``: the statements are rendered, nothing needs a server."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    return Operations(context), buffer


def signals(*, naive: bool = False) -> sa.Table:
    return sa.Table(
        "signals",
        sa.MetaData(),
        sa.Column("observed_at", sa.DateTime(timezone=not naive), primary_key=True),
        sa.Column("symbol", sa.String(32)),
        postgresql_partition_by='RANGE ("observed_at")',
    )


def test_a_good_partitioning_renders_the_initial_partitions() -> None:
    op, buffer = offline()
    partitioning = DatePartitioning(column="observed_at", interval="day", premake=2)
    create_partitions(op, signals(), partitioning, now=NOW)
    assert 'CREATE TABLE "signals_p20261129" PARTITION OF "signals"' in buffer.getvalue()
    assert 'CREATE TABLE "signals_default" PARTITION OF "signals" DEFAULT' in buffer.getvalue()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"interval": "daily"}, r"interval 'daily' is not one of 'day', 'week', 'month'; pick one"),
        ({"premake": 0}, r"premake=0: keep at least 1 future partition ready"),
        ({"retention": {"prd": None}}, r"retention key 'prd' is not an environment"),
        (
            {"retention": timedelta(hours=1)},
            r"retention for every environment \(1:00:00\) is shorter than one day partition",
        ),
        (
            {"column": "observedat"},
            r"names column 'observedat', but table signals has no such column "
            r"\(it has: observed_at, symbol\)",
        ),
        ({"column": "symbol"}, r"partition column 'symbol' has type"),
    ],
)
def test_a_bad_partitioning_is_one_configuration_error(
    change: dict[str, Any], expected: str
) -> None:
    # interval="daily" was a bare ValueError, an unknown column a bare KeyError, and premake=0
    # was accepted, though the model mixin refuses all three.
    op, buffer = offline()
    partitioning = DatePartitioning(**({"column": "observed_at"} | change))
    with pytest.raises(
        ConfigurationError, match=r"^create_partitions\(op, signals, \.\.\.\): "
    ) as e:
        create_partitions(op, signals(), partitioning, now=NOW)
    assert len(str(e.value).splitlines()) == 1
    assert e.match(expected)
    assert buffer.getvalue() == ""  # nothing rendered


def test_several_problems_are_listed_together() -> None:
    op, _ = offline()
    partitioning = DatePartitioning(column="observed_at", interval="daily", premake=0)
    with pytest.raises(ConfigurationError, match=r"2 problems") as e:
        create_partitions(op, signals(), partitioning, now=NOW)
    assert "interval 'daily'" in str(e.value)
    assert "premake=0" in str(e.value)


def test_a_timestamp_without_time_zone_is_refused() -> None:
    op, _ = offline()
    partitioning = DatePartitioning(column="observed_at")
    with pytest.raises(ConfigurationError, match=r"timestamp without time zone"):
        create_partitions(op, signals(naive=True), partitioning, now=NOW)


def test_a_partitioning_of_the_wrong_type_is_named() -> None:
    op, _ = offline()
    with pytest.raises(ConfigurationError, match=r"partitioning must be a DatePartitioning"):
        create_partitions(op, signals(), {"column": "observed_at"}, now=NOW)  # type: ignore[arg-type]
