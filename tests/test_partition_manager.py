"""Partition maintenance against a real PostgreSQL: the issue's must-hold behaviour."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Engine,
    ForeignKeyConstraint,
    String,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sigma_db import (
    ConfigurationError,
    DatabaseSettings,
    DatePartitioned,
    DatePartitioning,
    PartitionManager,
    create_engine,
)
from sigma_db.models import IdentityPrimaryKey, ProductBase
from sigma_db.partitions import Interval, partition_name, window_containing
from sigma_db.partitions.examples import AuditLog, ExampleBase, Signal

NOW = datetime.now(UTC)


def partitions(engine: Engine, table: str) -> dict[str, str]:
    """Child name -> bound expression, straight from the catalog."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TimeZone = 'UTC'")
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
            ),
            {"t": table},
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def daily_names(first: datetime, last: datetime) -> set[str]:
    window = window_containing(Interval.DAY, first)
    names = set()
    while window.start <= last:
        names.add(partition_name("signals", window))
        window = window.next()
    return names


def where(engine: Engine, table: str) -> dict[str, int]:
    """Rows per partition (by tableoid)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
        ).all()
    return {str(name).rpartition(".")[2]: int(count) for name, count in rows}


@pytest.fixture
def tables(engine: Engine) -> Iterator[Engine]:
    ExampleBase.metadata.create_all(engine)
    return engine


@pytest.fixture
def manager(db_settings: DatabaseSettings, tables: Engine) -> PartitionManager:
    return PartitionManager(db_settings, Signal, AuditLog, lock_timeout=timedelta(seconds=1))


def add_signals(engine: Engine, *moments: datetime) -> None:
    with Session(engine) as session, session.begin():
        session.add_all(Signal(observed_at=m, symbol="AAPL", value=1.0) for m in moments)


def test_create_all_gives_default_and_premade_partitions(tables: Engine) -> None:
    found = partitions(tables, "signals")
    assert found.pop("signals_default") == "DEFAULT"
    assert set(found) == daily_names(NOW, NOW + timedelta(days=7))
    assert found[partition_name("signals", window_containing(Interval.DAY, NOW))].startswith(
        "FOR VALUES FROM ('"
    )
    assert "audit_logs_default" in partitions(tables, "audit_logs")
    add_signals(tables, NOW)  # today's rows work right away
    assert where(tables, "signals") == {
        partition_name("signals", window_containing(Interval.DAY, NOW)): 1
    }


def test_a_transaction_pooler_is_refused(db_settings: DatabaseSettings) -> None:
    # Through PgBouncer's transaction mode the maintenance lock would stay on a pooled server
    # connection, and every later run would skip, believing another one is running.
    with pytest.raises(ConfigurationError, match="needs a direct connection"):
        PartitionManager(db_settings.model_copy(update={"pooler": "transaction"}), Signal)


def test_model_indexes_exist_on_every_partition(manager: PartitionManager, tables: Engine) -> None:
    manager.maintain(NOW)
    with tables.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, count(ix.indexrelid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid "
                "LEFT JOIN pg_index ix ON ix.indrelid = c.oid "
                "WHERE i.inhparent = 'signals'::regclass GROUP BY c.relname"
            )
        ).all()
    # pk + ix_signals_symbol_observed_at on each of DEFAULT, retained past and premade days
    assert len(rows) == 1 + 8 + 7
    assert {count for _, count in rows} == {2}


def test_rows_before_their_partition_land_in_default_and_are_moved(
    manager: PartitionManager, tables: Engine
) -> None:
    later = NOW + timedelta(days=20)
    moments = [later.replace(hour=h, minute=0, second=0, microsecond=0) for h in range(24)]
    add_signals(tables, *moments, *moments)  # 48 rows for a day with no partition yet
    assert where(tables, "signals") == {"signals_default": 48}
    with tables.connect() as conn:
        ids_before = set(conn.scalars(select(Signal.id)))

    report = manager.maintain(NOW + timedelta(days=15))

    assert report.ok, report.problem_lines()
    assert report.outcomes[0].moved_rows == 48
    target = partition_name("signals", window_containing(Interval.DAY, later))
    assert where(tables, "signals") == {target: 48}  # nothing left in DEFAULT, nothing doubled
    with tables.connect() as conn:
        assert set(conn.scalars(select(Signal.id))) == ids_before


def test_rows_it_cannot_place_are_reported(manager: PartitionManager, tables: Engine) -> None:
    add_signals(tables, NOW + timedelta(days=100), NOW + timedelta(days=100))
    report = manager.maintain(NOW)
    assert not report.ok
    (line,) = report.problem_lines()
    assert line.startswith("app.signals: 2 rows in DEFAULT partition signals_default cannot be")
    assert where(tables, "signals") == {"signals_default": 2}  # left where they are


def test_retention_drops_only_partitions_wholly_past_the_cutoff(
    manager: PartitionManager, tables: Engine
) -> None:
    add_signals(tables, NOW)
    later = NOW + timedelta(days=30)
    report = manager.maintain(later)
    assert report.ok, report.problem_lines()
    cutoff = later - timedelta(days=7)  # Signal keeps 7 days in dev
    found = set(partitions(tables, "signals")) - {"signals_default"}
    # the partition holding the cutoff stays: part of its range is still retained
    assert found == daily_names(cutoff, later + timedelta(days=7))
    assert partition_name("signals", window_containing(Interval.DAY, cutoff)) in found
    with tables.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Signal)) == 0  # dropped with NOW's day
        left = conn.execute(
            text(
                "SELECT count(*) FROM pg_class "
                "WHERE relname LIKE 'signals_p%' AND NOT relispartition"
            )
        ).scalar()
    assert left == 0  # dropped, not left detached


def test_partitions_from_before_an_interval_change_are_named_and_retired(
    engine: Engine,
) -> None:
    # The declaration went from daily to monthly partitions: the daily ones are still
    # sigma_db's. They block the month that overlaps them (said so), and retention retires them.
    class DailyBase(ProductBase, DeclarativeBase):
        pass

    class MonthlyBase(ProductBase, DeclarativeBase):
        pass

    def events(base: type[DeclarativeBase], interval: str) -> type:
        class Event(DatePartitioned, base):  # type: ignore[misc, valid-type]
            __tablename__ = "events"
            __partitioning__ = DatePartitioning(
                column="at", interval=interval, premake=2, retention=timedelta(days=40)
            )
            at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)

        return Event

    daily, monthly = events(DailyBase, "day"), events(MonthlyBase, "month")
    DailyBase.metadata.create_all(engine)
    january = datetime(2026, 1, 10, tzinfo=UTC)
    assert PartitionManager(engine, daily, environment="dev").maintain(january).ok
    manager = PartitionManager(engine, monthly, environment="dev")
    (line,) = manager.maintain(january).problem_lines()
    assert "made for a day window before the table's interval became month" in line
    with engine.connect() as conn:  # one daily retirement was interrupted mid-detach
        conn.exec_driver_sql(
            "UPDATE pg_inherits SET inhdetachpending = true "
            "WHERE inhrelid = 'app.events_p20260105'::regclass"
        )
        conn.commit()
    june = datetime(2026, 6, 1, tzinfo=UTC)
    manager.maintain(june)
    with engine.connect() as conn:  # finished and dropped, as expired="drop" says
        assert conn.scalar(text("SELECT to_regclass('app.events_p20260105')")) is None
    left = set(partitions(engine, "events"))
    daily_left = [n for n in left if len(n) == len("events_p20260110")]
    # create_all premade a few days around the real date; those are not expired in June
    assert [n for n in daily_left if n < "events_p20260422"] == [], daily_left  # June - 40 days
    assert "events_p202606" in left


def test_expired_detach_keeps_the_table(manager: PartitionManager, tables: Engine) -> None:
    with Session(tables) as session, session.begin():
        session.add(AuditLog(occurred_at=NOW, actor="ops", action="deploy"))
    later = NOW + timedelta(days=160)  # audit logs keep 62 days in dev
    report = manager.maintain(later)
    assert report.ok, report.problem_lines()
    month = partition_name("audit_logs", window_containing(Interval.MONTH, NOW))
    assert month not in partitions(tables, "audit_logs")
    with tables.connect() as conn:
        kept = conn.execute(text(f"SELECT actor FROM {month}")).scalars().all()
    assert kept == ["ops"]


def test_maintenance_is_idempotent(manager: PartitionManager, tables: Engine) -> None:
    first = manager.maintain(NOW + timedelta(days=3))
    before = partitions(tables, "signals"), partitions(tables, "audit_logs")
    second = manager.maintain(NOW + timedelta(days=3))
    assert first.ok
    assert second.ok
    assert second.plan is not None
    assert all(not table.actions for table in second.plan.tables)
    assert (partitions(tables, "signals"), partitions(tables, "audit_logs")) == before


def test_dry_run_changes_nothing_and_shows_sql(manager: PartitionManager, tables: Engine) -> None:
    before = partitions(tables, "signals")
    report = manager.maintain(NOW + timedelta(days=30), dry_run=True)
    assert report.dry_run
    assert partitions(tables, "signals") == before
    assert report.plan is not None
    lines = report.plan.lines()
    assert any("detach and drop expired signals_p" in line for line in lines)
    assert any(line.strip().startswith('CREATE TABLE "app"."signals_p') for line in lines)
    assert any(
        line.strip().startswith('ALTER TABLE "app"."signals" DETACH PARTITION') for line in lines
    )


def test_two_runs_at_once_one_skips_and_the_result_is_one_runs(
    db_settings: DatabaseSettings, manager: PartitionManager, tables: Engine
) -> None:
    later = NOW + timedelta(days=12)
    inside = threading.Event()
    release = threading.Event()

    def hold(line: str) -> None:
        inside.set()
        release.wait(30)

    first: list[Any] = []
    worker = threading.Thread(target=lambda: first.append(manager.maintain(later, progress=hold)))
    worker.start()
    assert inside.wait(30)
    second = PartitionManager(db_settings, Signal, AuditLog).maintain(later)  # while A works
    release.set()
    worker.join(60)
    assert second.skipped
    assert second.ok
    assert first[0].ok
    after_one = partitions(tables, "signals"), partitions(tables, "audit_logs")

    # and two that start together, both willing to wait: serialized, same end state
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(manager.maintain(later, wait=30))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.skipped for r in results] == [False, False]
    assert all(r.ok for r in results)
    assert (partitions(tables, "signals"), partitions(tables, "audit_logs")) == after_one


def test_a_query_for_one_day_touches_one_partition(
    manager: PartitionManager, tables: Engine
) -> None:
    manager.maintain(NOW)
    day = window_containing(Interval.DAY, NOW)
    add_signals(tables, day.start + timedelta(hours=1), day.next().start + timedelta(hours=1))
    with tables.connect() as conn:
        conn.exec_driver_sql("ANALYZE signals")
        plan = (
            conn.execute(
                text("EXPLAIN SELECT * FROM signals WHERE observed_at >= :a AND observed_at < :b"),
                {"a": day.start, "b": day.end},
            )
            .scalars()
            .all()
        )
    scanned = [line for line in plan if "signals_" in line and "Scan" in line]
    assert len(scanned) == 1, plan
    assert partition_name("signals", day) in scanned[0]


def test_lock_not_granted_is_reported_and_retried_next_run(
    db_settings: DatabaseSettings, tables: Engine
) -> None:
    manager = PartitionManager(db_settings, Signal, lock_timeout=timedelta(milliseconds=100))
    with tables.connect() as blocker:
        blocker.exec_driver_sql("LOCK TABLE signals_default IN ACCESS SHARE MODE")  # like a reader
        blocked = manager.maintain(NOW + timedelta(days=3))
        blocker.rollback()
    assert not blocked.ok
    assert "lock not granted within lock_timeout" in blocked.problem_lines()[0]
    retried = manager.maintain(NOW + timedelta(days=3))
    assert retried.ok, retried.problem_lines()


class _NoDefaultBase(ProductBase, DeclarativeBase):
    pass


class Tick(DatePartitioned, IdentityPrimaryKey, _NoDefaultBase):
    __partitioning__ = DatePartitioning(
        column="at",
        interval="day",
        premake=2,
        retention=timedelta(days=2),
        default_partition=False,
    )
    at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    venue: Mapped[str] = mapped_column(String(8))


def test_without_default_partition_retention_detaches_concurrently(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    _NoDefaultBase.metadata.create_all(engine)
    assert "ticks_default" not in partitions(engine, "ticks")
    manager = PartitionManager(db_settings, Tick)
    plan = manager.plan(NOW + timedelta(days=5))
    retire = [a for a in plan.tables[0].actions if a.kind == "retire"]
    assert retire
    assert all(a.statements[1].endswith("CONCURRENTLY") for a in retire)
    report = manager.maintain(NOW + timedelta(days=5))
    assert report.ok, report.problem_lines()
    assert report.outcomes[0].dropped == len(retire)


def test_a_detach_left_pending_holds_back_the_tables_other_detaches(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    # A report's snapshot keeps DETACH ... CONCURRENTLY from finishing: the partition is left
    # detach pending, and PostgreSQL refuses a second pending detach on the table. That was
    # reported as "partition X already pending detach" under the next partition's name.
    _NoDefaultBase.metadata.create_all(engine)
    manager = PartitionManager(db_settings, Tick, lock_timeout=timedelta(milliseconds=200))
    later = NOW + timedelta(days=5)
    assert len([a for a in manager.plan(later).tables[0].actions if a.kind == "retire"]) >= 2
    with engine.connect() as report:
        report.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        report.execute(text("SELECT count(*) FROM ticks"))
        problems = manager.maintain(later).problem_lines()
    assert any("left detach pending, which the next run finishes" in p for p in problems)
    assert any("finishes detaching (one pending detach per table)" in p for p in problems)
    assert not any("already pending detach" in p for p in problems), problems
    finished = manager.maintain(later)
    assert finished.ok, finished.problem_lines()


def test_interrupted_concurrent_detach_is_finalized(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    _NoDefaultBase.metadata.create_all(engine)
    today = partition_name("ticks", window_containing(Interval.DAY, NOW))
    with engine.connect() as conn:
        # simulate the state an interrupted DETACH ... CONCURRENTLY leaves behind
        conn.exec_driver_sql(
            "UPDATE pg_inherits SET inhdetachpending = true WHERE inhrelid = %(t)s::regclass",
            {"t": today},
        )
        conn.commit()
    manager = PartitionManager(db_settings, Tick)
    later = NOW + timedelta(days=5)  # today's partition is expired by then
    plan = manager.plan(later)
    assert [a.kind for a in plan.tables[0].actions][:1] == ["finalize"]
    report = manager.maintain(later)
    assert report.ok, report.problem_lines()
    assert today not in partitions(engine, "ticks")
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass(:t)"), {"t": today}) is None  # dropped


def test_missing_table_is_a_problem_line(db_settings: DatabaseSettings) -> None:
    report = PartitionManager(db_settings, Signal).maintain(NOW)
    assert report.problem_lines() == [
        "signals: table does not exist; create it first (alembic upgrade head, with "
        "sigma_db.partitions.create_partitions in the revision that creates it)"
    ]


def test_moving_rows_out_of_default_does_not_deadlock_with_concurrent_inserts(
    db_settings: DatabaseSettings, tables: Engine
) -> None:
    """The move locks the parent first, as an INSERT does: inserts wait instead of deadlocking."""
    later = NOW + timedelta(days=20)
    window = window_containing(Interval.DAY, later)
    with tables.begin() as conn:  # enough rows in DEFAULT that the move takes a while
        conn.execute(
            text(
                "INSERT INTO signals (observed_at, symbol, value) "
                "SELECT :at + n * interval '1 second', 'OLD', n FROM generate_series(1, 60000) n"
            ),
            {"at": window.start},
        )
    stop = threading.Event()
    failures: list[BaseException] = []
    inserted = 0

    def insert_forever() -> None:
        nonlocal inserted
        engine = create_engine(db_settings)
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    conn.execute(
                        text(
                            "INSERT INTO signals (observed_at, symbol, value) "
                            "VALUES (:at, 'LIVE', 0)"
                        ),
                        {"at": window.start + timedelta(hours=1)},
                    )
                inserted += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            engine.dispose()

    manager = PartitionManager(db_settings, Signal, lock_timeout=timedelta(seconds=5))
    threads = [threading.Thread(target=insert_forever) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        report = manager.maintain(NOW + timedelta(days=15))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert report.ok, report.problem_lines()
    assert inserted > 0
    with tables.connect() as conn:
        live = conn.scalar(text("SELECT count(*) FROM signals WHERE symbol = 'LIVE'"))
        old = conn.scalar(text("SELECT count(*) FROM signals WHERE symbol = 'OLD'"))
        ids = conn.scalar(text("SELECT count(DISTINCT id) = count(*) FROM signals"))
    assert (live, old, ids) == (inserted, 60000, True)
    assert where(tables, "signals").get("signals_default", 0) == 0


def test_pending_detach_of_a_retained_partition_is_finalized_not_dropped(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    """Someone else's interrupted detach of a partition still in retention: data is kept."""
    _NoDefaultBase.metadata.create_all(engine)
    today = partition_name("ticks", window_containing(Interval.DAY, NOW))
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "UPDATE pg_inherits SET inhdetachpending = true WHERE inhrelid = %(t)s::regclass",
            {"t": today},
        )
        conn.commit()
    report = PartitionManager(db_settings, Tick).maintain(NOW)  # today is not expired
    (line,) = report.problem_lines()
    assert f"{today} was left detaching though its range is still retained" in line
    assert report.outcomes[0].dropped == 0
    assert report.outcomes[0].detached == 1
    assert today not in partitions(engine, "ticks")
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass(:t)"), {"t": today}) is not None  # kept


def test_move_keeps_database_columns_the_model_lacks_and_skips_generated_ones(
    manager: PartitionManager, tables: Engine
) -> None:
    with tables.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE signals ADD COLUMN note text")
        conn.exec_driver_sql(
            "ALTER TABLE signals ADD COLUMN doubled double precision "
            "GENERATED ALWAYS AS (value * 2) STORED"
        )
        conn.exec_driver_sql("ALTER TABLE signals DROP COLUMN note")  # a dropped column too
        conn.exec_driver_sql("ALTER TABLE signals ADD COLUMN note text")
        conn.execute(
            text(
                "INSERT INTO signals (observed_at, symbol, value, note) VALUES (:at, 'X', 2, 'n')"
            ),
            {"at": NOW + timedelta(days=20)},
        )
    report = manager.maintain(NOW + timedelta(days=15))
    assert report.ok, report.problem_lines()
    assert report.outcomes[0].moved_rows == 1
    with tables.connect() as conn:
        row = conn.execute(text("SELECT note, doubled FROM signals")).one()
    assert tuple(row) == ("n", 4.0)


def test_bounds_are_read_whatever_the_datestyle(
    db_settings: DatabaseSettings, tables: Engine
) -> None:
    with tables.connect() as conn:
        database = conn.scalar(text("SELECT current_database()"))
        conn.exec_driver_sql(f"ALTER DATABASE \"{database}\" SET DateStyle = 'SQL, DMY'")
        conn.commit()
    manager = PartitionManager(db_settings, Signal)
    report = manager.maintain(NOW + timedelta(days=30))
    assert report.ok, report.problem_lines()
    assert report.outcomes[0].created > 0
    assert report.outcomes[0].dropped > 0


def test_a_foreign_partition_overlapping_a_window_is_a_problem(
    manager: PartitionManager, tables: Engine
) -> None:
    day = window_containing(Interval.DAY, NOW + timedelta(days=10))
    with tables.begin() as conn:
        lower, upper = (day.start + timedelta(hours=12), day.end + timedelta(hours=12))
        conn.exec_driver_sql(
            "CREATE TABLE signals_odd PARTITION OF signals "
            f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
        )
    report = manager.maintain(NOW + timedelta(days=5))
    assert not report.ok
    (line,) = report.problem_lines()
    assert "signals_odd" in line and "sigma_db did not create" in line


def test_runs_for_two_schemas_of_one_database_do_not_skip_each_other(
    db_settings: DatabaseSettings, manager: PartitionManager, tables: Engine
) -> None:
    """The consolidated dev database: lab's and market's cron jobs start at the same minute."""
    with tables.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA market")
    market_engine = create_engine(db_settings).execution_options(
        schema_translate_map={None: "market"}
    )
    ExampleBase.metadata.create_all(market_engine)
    market = PartitionManager(market_engine, Signal, environment="dev")
    inside = threading.Event()
    release = threading.Event()

    def hold(line: str) -> None:
        inside.set()
        release.wait(30)

    first: list[Any] = []
    worker = threading.Thread(target=lambda: first.append(manager.maintain(NOW, progress=hold)))
    worker.start()
    try:
        assert inside.wait(30)
        other = market.maintain(NOW)  # while the app schema's run holds its lock
    finally:
        release.set()
        worker.join(60)
        market_engine.dispose()
    assert not other.skipped
    assert other.ok, other.problem_lines()
    assert first[0].ok


def detached_tables(engine: Engine) -> dict[str, str | None]:
    """Plain (no longer partition) tables in the app schema -> their comment."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class "
                "WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' "
                "AND NOT relispartition"
            )
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def test_a_drop_cut_short_after_the_detach_is_finished_by_the_next_run(
    manager: PartitionManager, tables: Engine
) -> None:
    # A run killed (or whose DROP hit lock_timeout) after its DETACH committed left the expired
    # partition as a plain table, which later runs never mentioned again.
    add_signals(tables, NOW)
    later = NOW + timedelta(days=30)
    retire = [a for a in manager.plan(later).tables[0].actions if a.kind == "retire"]
    mark = "sigma_db: detached partition of signals (expired: to drop)"
    assert retire[0].statements == (
        f'COMMENT ON TABLE "app"."{retire[0].partition}" IS \'{mark}\'',
        f'ALTER TABLE "app"."signals" DETACH PARTITION "app"."{retire[0].partition}"',
        f'DROP TABLE "app"."{retire[0].partition}"',
    )
    with tables.begin() as conn:  # what that run left: marked, detached, not dropped
        conn.exec_driver_sql(retire[0].statements[0])
        conn.exec_driver_sql(retire[0].statements[1])
        # a kept archive and another table's leftover are not this table's to drop
        conn.exec_driver_sql("CREATE TABLE signals_archive (id bigint)")
        conn.exec_driver_sql(
            "COMMENT ON TABLE signals_archive IS "
            "'sigma_db: detached partition of signals (retention)'"
        )
        conn.exec_driver_sql("CREATE TABLE ticks_p20260101 (id bigint)")
        conn.exec_driver_sql(
            "COMMENT ON TABLE ticks_p20260101 IS "
            "'sigma_db: detached partition of ticks (expired: to drop)'"
        )
    assert retire[0].partition in detached_tables(tables)

    lines = manager.maintain(later, dry_run=True).plan.lines()  # type: ignore[union-attr]
    assert (
        f"app.signals: drop {retire[0].partition}, detached by an interrupted run (marked to drop)"
        in lines
    )
    assert f'    DROP TABLE "app"."{retire[0].partition}";' in lines
    report = manager.maintain(later)
    assert report.ok, report.problem_lines()
    assert report.outcomes[0].dropped == len(retire)  # the leftover counts as dropped
    left = detached_tables(tables)
    assert retire[0].partition not in left
    assert set(left) >= {"signals_archive", "ticks_p20260101"}
    assert manager.maintain(later).outcomes[0].dropped == 0


def test_a_detach_blocked_window_is_named_and_the_others_are_created(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    # expired="detach" kept some days as plain tables; then the retention was lengthened: those
    # days' windows are back, their names taken. The whole batch of creates failed, and the
    # error named the batch's first partition.
    def events(retention: timedelta) -> tuple[type[DeclarativeBase], type]:
        class Base(ProductBase, DeclarativeBase):
            pass

        class Event(DatePartitioned, IdentityPrimaryKey, Base):
            __tablename__ = "events"
            __partitioning__ = DatePartitioning(
                column="at", interval="day", premake=3, retention=retention, expired="detach"
            )
            at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)

        return Base, Event

    base, short = events(timedelta(days=7))
    base.metadata.create_all(engine)
    start = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert PartitionManager(db_settings, short).maintain(start).ok
    assert PartitionManager(db_settings, short).maintain(start + timedelta(days=3)).ok
    kept = sorted(n for n in detached_tables(engine) if n.startswith("events_p"))
    assert len(kept) == 3

    with engine.begin() as conn:  # a late row for the first kept day waits in DEFAULT
        conn.execute(
            text("INSERT INTO events (at) VALUES (:at)"), {"at": start - timedelta(days=7)}
        )

    _, longer = events(timedelta(days=30))
    later = start + timedelta(days=6)
    report = PartitionManager(db_settings, longer).maintain(later)
    (line,) = report.problem_lines()
    for name in kept:
        assert (
            f"window {name.removeprefix('events_')}: name {name} taken by table app.{name} "
            "(a detached partition kept by retention?): rename or drop it" in line
        )
    assert f"{kept[0]} (a detached" in line
    assert "(DEFAULT keeps its 1 row until then)" in line
    found = set(partitions(engine, "events"))
    ahead = partition_name("events", window_containing(Interval.DAY, later + timedelta(days=3)))
    assert ahead in found  # created, though other windows of its batch could not be
    assert not found & set(kept)


def test_a_row_reaching_default_during_the_run_fails_only_its_window(
    manager: PartitionManager, tables: Engine
) -> None:
    # A row inserted into DEFAULT between planning and creating: that window's CREATE fails,
    # and it alone; the next run moves the row.
    later = NOW + timedelta(days=120)
    plan = manager.plan(later).tables[1]
    creates = [a for a in plan.actions if a.kind == "create"]
    assert len(creates) >= 3
    late = creates[-1]
    assert late.window is not None

    def insert_late_row(line: str) -> None:
        if line.startswith("app.signals: created") and not where(tables, "audit_logs"):
            with Session(tables) as session, session.begin():
                session.add(AuditLog(occurred_at=late.window.start, actor="ops", action="late"))

    report = manager.maintain(later, progress=insert_late_row)
    (line,) = report.problem_lines()
    assert line.startswith(f"app.audit_logs: {late.partition}: ")
    assert "the next run moves them" in line
    assert report.outcomes[1].created == len(creates) - 1
    found = partitions(tables, "audit_logs")
    assert {a.partition for a in creates[:-1]} <= set(found)
    again = manager.maintain(later)
    assert again.ok, again.problem_lines()
    assert where(tables, "audit_logs") == {late.partition: 1}


def test_a_partition_column_postgresql_quotes_is_recognised(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    # pg_get_partkeydef says RANGE ("timestamp"): compared as text, the table was refused.
    class Base(ProductBase, DeclarativeBase):
        pass

    class Quote(DatePartitioned, IdentityPrimaryKey, Base):
        __partitioning__ = DatePartitioning(column="timestamp", interval="day", premake=2)
        timestamp: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)

    Base.metadata.create_all(engine)
    manager = PartitionManager(db_settings, Quote)
    report = manager.maintain(NOW + timedelta(days=3))
    assert report.ok, report.problem_lines()
    assert report.outcomes[0].created > 0
    assert manager.maintain(NOW + timedelta(days=3)).outcomes[0].created == 0


def test_a_table_partitioned_otherwise_is_refused(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE signals (id bigint, observed_at timestamptz, symbol text, "
            "value double precision) PARTITION BY LIST (symbol)"
        )
    (line,) = PartitionManager(db_settings, Signal).maintain(NOW).problem_lines()
    assert line == (
        "app.signals: table is LIST (symbol), but the model declares PARTITION BY RANGE "
        "(observed_at); recreate it partitioned (a plain table cannot be converted in place)"
    )


class _OrdersBase(ProductBase, DeclarativeBase):
    pass


_SHORT = DatePartitioning(
    column="placed_at", interval="day", premake=2, retention=timedelta(days=3)
)


class Order(DatePartitioned, IdentityPrimaryKey, _OrdersBase):
    __partitioning__ = _SHORT
    placed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)


class Fill(DatePartitioned, IdentityPrimaryKey, _OrdersBase):
    __partitioning__ = _SHORT
    __table_args__ = (
        ForeignKeyConstraint(["order_id", "placed_at"], ["orders.id", "orders.placed_at"]),
    )
    placed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger)


@pytest.mark.parametrize(
    "models", [(Order, Fill), (Fill, Order)], ids=["orders-first", "fills-first"]
)
def test_a_foreign_key_between_partitioned_tables_retires_referencing_first(
    db_settings: DatabaseSettings, engine: Engine, models: tuple[type, ...]
) -> None:
    # Retiring table by table, the referenced orders' day was detached while fills' same day
    # still referenced it: "removing partition ... violates foreign key constraint", once per
    # expiry.
    _OrdersBase.metadata.create_all(engine)
    with engine.begin() as conn:
        order = conn.execute(
            text("INSERT INTO orders (placed_at) VALUES (:at) RETURNING id"), {"at": NOW}
        ).scalar()
        conn.execute(
            text("INSERT INTO fills (placed_at, order_id) VALUES (:at, :o)"),
            {"at": NOW, "o": order},
        )
    report = PartitionManager(db_settings, *models).maintain(NOW + timedelta(days=10))
    assert report.ok, report.problem_lines()
    assert all(outcome.dropped > 0 for outcome in report.outcomes)
    today = window_containing(Interval.DAY, NOW)
    assert partition_name("orders", today) not in partitions(engine, "orders")


def test_years_before_1000_get_their_own_dates(
    db_settings: DatabaseSettings, tables: Engine
) -> None:
    # --now 0005-06-01: bounds were rendered '5-05-25 00:00:00+00', which PostgreSQL reads as
    # another date, and the names lost their leading zeros.
    manager = PartitionManager(db_settings, Signal)
    year5 = datetime(5, 6, 1, 12, tzinfo=UTC)
    assert manager.maintain(year5).ok
    found = partitions(tables, "signals")
    assert found["signals_p00050601"] == (
        "FOR VALUES FROM ('0005-06-01 00:00:00+00') TO ('0005-06-02 00:00:00+00')"
    )
    again = manager.maintain(year5)
    assert again.plan is not None
    assert not again.plan.tables[0].actions
