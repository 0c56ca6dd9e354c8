"""The naming rules against a real PostgreSQL: what create_all makes is what the models say."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    String,
    Table,
    UniqueConstraint,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sigma_db.models import IdentityPrimaryKey, ProductBase, Timestamps

# (table, constraint name, pg_constraint.contype)
EXPECTED_CONSTRAINTS = {
    ("packs", "pk_packs", "p"),
    ("packs", "uq_packs_code", "u"),
    ("signals", "pk_signals", "p"),
    ("signals", "fk_signals_pack_id_packs", "f"),
    ("signals", "uq_signals_pack_id_symbol", "u"),
    ("signals", "ck_signals_score_non_negative", "c"),
    ("strategy_configurations", "pk_strategy_configurations", "p"),
    ("backtest_run_parameter_sweep_results", "pk_backtest_run_parameter_sweep_results", "p"),
    (
        "backtest_run_parameter_sweep_results",
        "fk_backtest_run_parameter_sweep_results_strategy_confi_b2b4286a",
        "f",
    ),
    (
        "backtest_run_parameter_sweep_results",
        "uq_backtest_run_parameter_sweep_results_strategy_confi_9154abf6",
        "u",
    ),
    (
        "backtest_run_parameter_sweep_results",
        "ck_backtest_run_parameter_sweep_results_sweep_label_mu_4e46f961",
        "c",
    ),
}
# Primary keys and unique constraints are backed by indexes of the same name.
EXPECTED_INDEXES = {
    (table, name) for table, name, kind in EXPECTED_CONSTRAINTS if kind in {"p", "u"}
} | {
    ("signals", "ix_signals_pack_id"),
    (
        "backtest_run_parameter_sweep_results",
        "ix_backtest_run_parameter_sweep_results_strategy_confi_44bf79cd",
    ),
}


def define_models() -> tuple[Any, Any, Any]:
    class Base(ProductBase, DeclarativeBase):
        pass

    class Pack(IdentityPrimaryKey, Timestamps, Base):
        code: Mapped[str] = mapped_column(String(40), unique=True)

    class Signal(IdentityPrimaryKey, Timestamps, Base):
        pack_id: Mapped[int] = mapped_column(ForeignKey("packs.id"), index=True)
        symbol: Mapped[str] = mapped_column(String(20))
        score: Mapped[int]
        __table_args__ = (
            UniqueConstraint("pack_id", "symbol"),
            CheckConstraint("score >= 0", name="score_non_negative"),
        )

    class StrategyConfiguration(IdentityPrimaryKey, Base):
        label: Mapped[str] = mapped_column(String(80))

    class BacktestRunParameterSweepResult(IdentityPrimaryKey, Base):
        strategy_configuration_version_id: Mapped[int] = mapped_column(
            ForeignKey("strategy_configurations.id"), index=True
        )
        sweep_label: Mapped[str] = mapped_column(String(80))
        __table_args__ = (
            UniqueConstraint("strategy_configuration_version_id", "sweep_label"),
            CheckConstraint("sweep_label <> ''", name="sweep_label_must_not_be_empty"),
        )

    return Base, Pack, Signal


def test_constraint_and_index_names_in_the_database_follow_the_convention(
    engine: Engine,
) -> None:
    base, _, _ = define_models()
    base.metadata.create_all(engine)

    with engine.connect() as connection:
        constraints = {
            (row.relname, row.conname, row.contype)
            for row in connection.execute(
                text(
                    "SELECT t.relname, c.conname, c.contype::text AS contype"
                    " FROM pg_constraint c"
                    " JOIN pg_class t ON t.oid = c.conrelid"
                    " JOIN pg_namespace n ON n.oid = t.relnamespace"
                    " WHERE n.nspname = 'app' AND c.contype IN ('p', 'f', 'u', 'c')"
                )
            )
        }
        indexes = {
            (row.tablename, row.indexname)
            for row in connection.execute(
                text("SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'app'")
            )
        }

    assert constraints == EXPECTED_CONSTRAINTS
    assert indexes == EXPECTED_INDEXES
    assert all(len(name.encode()) <= 63 for _, name, _ in constraints)


def test_rows_round_trip_with_identity_ids_and_server_timestamps(engine: Engine) -> None:
    base, pack_model, signal_model = define_models()
    base.metadata.create_all(engine)

    with Session(engine) as session, session.begin():
        pack = pack_model(code="momentum")
        session.add(pack)
        session.flush()
        session.add(signal_model(pack_id=pack.id, symbol="AAPL", score=3))

    with Session(engine) as session:
        pack = session.scalars(select(pack_model)).one()
        signal = session.scalars(select(signal_model)).one()
        assert isinstance(pack.id, int)
        assert signal.pack_id == pack.id
        assert isinstance(pack.created_at, datetime)
        assert pack.created_at.tzinfo is not None
        assert pack.updated_at == pack.created_at  # one transaction, one now()
        inserted_at = pack.updated_at

    with Session(engine) as session, session.begin():
        session.scalars(select(pack_model)).one().code = "mean_reversion"

    with Session(engine) as session:
        pack = session.scalars(select(pack_model)).one()
        assert pack.code == "mean_reversion"
        assert pack.created_at == inserted_at
        assert pack.updated_at > inserted_at


def test_violations_report_the_convention_name(engine: Engine) -> None:
    base, pack_model, _ = define_models()
    base.metadata.create_all(engine)

    with Session(engine) as session, session.begin():
        session.add(pack_model(code="momentum"))

    with Session(engine) as session:
        session.add(pack_model(code="momentum"))
        with pytest.raises(IntegrityError) as caught:
            session.flush()

    violation = caught.value.orig
    assert isinstance(violation, psycopg.errors.UniqueViolation)
    assert violation.diag.constraint_name == "uq_packs_code"


def test_tables_reflected_into_the_product_metadata_keep_the_database_names(
    engine: Engine,
) -> None:
    with engine.begin() as connection:
        connection.execute(text('CREATE TABLE "PackTag" ("packId" bigint, "order" text)'))
        connection.execute(text("CREATE TABLE legacy_status (code text)"))

    class Base(ProductBase, DeclarativeBase):
        pass

    pack_tag = Table("PackTag", Base.metadata, autoload_with=engine)
    Base.metadata.reflect(engine)

    assert pack_tag.c.keys() == ["packId", "order"]
    assert set(Base.metadata.tables) == {"PackTag", "legacy_status"}
