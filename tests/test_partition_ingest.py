"""COPY ingest into partitioned tables, from a Session or a Connection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from sigma_db import ConfigurationError, copy_rows
from sigma_db.partitions.examples import AuditLog, ExampleBase, Signal

NOW = datetime.now(UTC)


@pytest.fixture
def tables(engine: Engine) -> Engine:
    ExampleBase.metadata.create_all(engine)
    return engine


def test_copy_from_a_session_routes_rows_to_their_partitions(tables: Engine) -> None:
    rows = [(NOW + timedelta(hours=h), "AAPL", float(h)) for h in range(0, 24 * 3, 3)]
    rows.append((NOW + timedelta(days=60), "LATE", 0.0))  # no partition yet: DEFAULT
    with Session(tables) as session, session.begin():
        assert copy_rows(session, Signal, rows) == len(rows)
    with tables.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(Signal))
        in_default = conn.scalar(text("SELECT count(*) FROM signals_default"))
        ids = conn.scalar(select(func.count(func.distinct(Signal.id))))
    assert total == len(rows)
    assert in_default == 1
    assert ids == len(rows)  # identity filled by the database


def test_copy_mappings_on_a_connection_with_jsonb(tables: Engine) -> None:
    with tables.connect() as conn:
        written = copy_rows(
            conn,
            AuditLog,
            [
                {"occurred_at": NOW, "actor": "ops", "action": "deploy", "detail": {"v": 2}},
                {"occurred_at": NOW, "actor": "ci", "action": "migrate", "detail": {}},
            ],
            columns=["occurred_at", "actor", "action", "detail"],
        )
        conn.commit()
    assert written == 2
    with Session(tables) as session:
        found = session.scalars(select(AuditLog).order_by(AuditLog.actor)).all()
    assert [(a.actor, a.detail) for a in found] == [("ci", {}), ("ops", {"v": 2})]


def test_text_format_and_rollback(tables: Engine) -> None:
    with Session(tables) as session:
        copy_rows(session, Signal, [(NOW, "X", 1.5)], binary=False)
        session.rollback()  # the rows belong to the session's transaction
    with tables.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Signal)) == 0


def test_unknown_column_is_one_clear_error(tables: Engine) -> None:
    with Session(tables) as session, pytest.raises(ConfigurationError, match=r"\['price'\]"):
        copy_rows(session, Signal, [], columns=["observed_at", "price"])


def test_text_format_with_jsonb_dicts(tables: Engine) -> None:
    rows = [{"occurred_at": NOW, "actor": "ops", "action": "deploy", "detail": {"v": 1}}]
    with Session(tables) as session, session.begin():
        assert copy_rows(session, AuditLog, rows, binary=False) == 1
    with Session(tables) as session:
        assert session.scalars(select(AuditLog.detail)).one() == {"v": 1}


def test_python_side_defaults_fill_missing_keys(tables: Engine) -> None:
    rows = [{"occurred_at": NOW, "actor": "ops", "action": "deploy"}]  # no "detail"
    with Session(tables) as session, session.begin():
        assert copy_rows(session, AuditLog, rows) == 1
    with Session(tables) as session:
        assert session.scalars(select(AuditLog.detail)).one() == {}


def test_missing_key_without_default_is_one_clear_error(tables: Engine) -> None:
    with (
        Session(tables) as session,
        pytest.raises(ConfigurationError, match=r"row 0 has no 'actor'"),
    ):
        copy_rows(session, AuditLog, [{"occurred_at": NOW, "action": "deploy"}])


@pytest.mark.parametrize("binary", [True, False])
def test_naive_datetime_is_one_clear_error(tables: Engine, binary: bool) -> None:
    naive = datetime(2026, 11, 27, 12, 0)
    with (
        Session(tables) as session,
        pytest.raises(ConfigurationError, match=r"row 1.*observed_at.*naive datetime"),
    ):
        copy_rows(session, Signal, [(NOW, "A", 1.0), (naive, "B", 2.0)], binary=binary)
