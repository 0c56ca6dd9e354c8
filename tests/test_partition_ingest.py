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
