"""Alembic with live partitions: autogenerate sees the parents only; the helper makes them usable.

The migrations entry point (issue #4) is not on main yet, so these tests drive Alembic through
a minimal plain env using the reusable hooks of :func:`sigma_db.partitions.exclude_partitions`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Engine,
    ForeignKeyConstraint,
    Index,
    String,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sigma_db import DatabaseSettings, DatePartitioned, DatePartitioning, PartitionManager
from sigma_db.models import IdentityPrimaryKey, ProductBase
from sigma_db.partitions import exclude_partitions
from sigma_db.partitions.examples import AuditLog, ExampleBase, Signal

NOW = datetime.now(UTC)


class ShopBase(ProductBase, DeclarativeBase):
    pass


class Order(DatePartitioned, IdentityPrimaryKey, ShopBase):
    __partitioning__ = DatePartitioning(column="placed_at", interval="month", premake=2)
    placed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    customer: Mapped[str] = mapped_column(String(40), index=True)


class OrderLine(DatePartitioned, IdentityPrimaryKey, ShopBase):
    """Partitioned, with a foreign key to another partitioned table (alembic #1787)."""

    __partitioning__ = DatePartitioning(column="placed_at", interval="month", premake=2)
    __table_args__ = (
        ForeignKeyConstraint(["order_id", "placed_at"], ["orders.id", "orders.placed_at"]),
        Index(None, "sku"),
    )
    placed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger)
    sku: Mapped[str] = mapped_column(String(20))


def diffs(engine: Engine, metadata: Any, *, filtered: bool = True) -> list[Any]:
    with engine.connect() as conn:
        opts: dict[str, Any] = {"target_metadata": metadata}
        if filtered:
            hooks = exclude_partitions(conn)
            opts |= {"include_name": hooks.include_name, "include_object": hooks.include_object}
        return compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)


def test_autogenerate_renders_the_partitioned_parent(engine: Engine) -> None:
    with engine.connect() as conn:
        hooks = exclude_partitions(conn)
        context = MigrationContext.configure(
            conn,
            opts={
                "target_metadata": ExampleBase.metadata,
                "include_name": hooks.include_name,
                "include_object": hooks.include_object,
            },
        )
        code = render_python_code(produce_migrations(context, ExampleBase.metadata).upgrade_ops)
    assert "op.create_table('signals'" in code
    assert "postgresql_partition_by='RANGE (\"observed_at\")'" in code
    assert "op.create_index(op.f('ix_signals_symbol_observed_at')" in code


def test_check_is_clean_with_live_partitions_and_fk_between_partitioned_tables(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    ShopBase.metadata.create_all(engine)
    PartitionManager(db_settings, Order, OrderLine).maintain(NOW + timedelta(days=40))
    with Session(engine) as session, session.begin():
        order = Order(placed_at=NOW, customer="ada")
        session.add(order)
        session.flush()
        session.add(OrderLine(placed_at=NOW, order_id=order.id, sku="X-1"))
    with engine.connect() as conn:
        live = conn.scalar(text("SELECT count(*) FROM pg_class WHERE relispartition"))
    assert live and live >= 10  # partitions and their indexes really exist
    assert diffs(engine, ShopBase.metadata) == []


def test_check_is_clean_for_the_examples(db_settings: DatabaseSettings, engine: Engine) -> None:
    ExampleBase.metadata.create_all(engine)
    PartitionManager(db_settings, Signal, AuditLog).maintain(NOW + timedelta(days=3))
    assert diffs(engine, ExampleBase.metadata) == []


def test_without_the_filter_autogenerate_would_drop_partitions(engine: Engine) -> None:
    ExampleBase.metadata.create_all(engine)
    found = diffs(engine, ExampleBase.metadata, filtered=False)
    dropped = {d[1].name for d in found if d[0] == "remove_table"}
    assert "signals_default" in dropped  # what the filter is for (alembic #539)


ENV_PY = """
from alembic import context
from sqlalchemy import create_engine
from sigma_db.partitions import exclude_partitions

config = context.config
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        hooks = exclude_partitions(connection)
        context.configure(
            connection=connection,
            include_name=hooks.include_name,
            include_object=hooks.include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
"""

REVISION = '''
"""create readings"""
import sqlalchemy as sa
from alembic import op
from sigma_db.partitions import DatePartitioning, create_partitions

revision = "0001"
down_revision = None


def upgrade():
    readings = op.create_table(
        "readings",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("taken_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", "taken_at", name="pk_readings"),
        postgresql_partition_by="RANGE (taken_at)",
    )
    create_partitions(op, readings, DatePartitioning(column="taken_at", interval="day", premake=2))


def downgrade():
    op.drop_table("readings")
'''


@pytest.fixture
def alembic_config(tmp_path: Path, db_settings: DatabaseSettings) -> Config:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV_PY, encoding="utf-8")
    (tmp_path / "script.py.mako").write_text("", encoding="utf-8")
    (tmp_path / "versions" / "0001_readings.py").write_text(REVISION, encoding="utf-8")
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    url = db_settings.url().render_as_string(hide_password=False).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_upgrade_head_then_todays_rows_insert(alembic_config: Config, engine: Engine) -> None:
    command.upgrade(alembic_config, "head")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO readings (taken_at, value) VALUES (now(), 1.0)"))
        where = conn.scalar(text("SELECT tableoid::regclass::text FROM readings"))
        names = set(
            conn.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'readings'::regclass"
                )
            )
        )
    today = f"readings_p{NOW:%Y%m%d}"
    assert where is not None and where.endswith(today)  # in its own partition, not DEFAULT
    assert names == {
        today,
        f"readings_p{NOW + timedelta(days=1):%Y%m%d}",
        f"readings_p{NOW + timedelta(days=2):%Y%m%d}",
        "readings_default",
    }
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(text("readings"))) == 1


def test_offline_sql_shows_the_partitions(
    alembic_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.upgrade(alembic_config, "head", sql=True)
    out = capsys.readouterr().out
    assert "PARTITION BY RANGE (taken_at)" in out
    assert f'CREATE TABLE "readings_p{NOW:%Y%m%d}" PARTITION OF "readings"' in out
    assert 'CREATE TABLE "readings_default" PARTITION OF "readings" DEFAULT' in out
