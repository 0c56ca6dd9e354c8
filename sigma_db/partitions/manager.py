"""Partition maintenance: create what is missing, empty the DEFAULT partition, retire the expired.

One run, first for every date-partitioned table:

1. **drop** what an earlier run detached to drop but did not drop (it stopped, or its ``DROP``
   hit ``lock_timeout``): plain tables in the table's schema whose comment is exactly
   ``sigma_db: detached partition of <table> (expired: to drop)``;
2. **move** rows out of the DEFAULT partition: for each window holding rows there (and within
   retention, and not beyond ``now + premake``), in one transaction: lock the parent, then the
   DEFAULT partition (the order an application's INSERT takes them, so the two never deadlock),
   ``DELETE ... RETURNING`` its rows for that window into a temporary table, create the
   partition, insert the rows into it. PostgreSQL refuses to create a partition while the DEFAULT
   holds rows for its range (pg_partman #429); this is how pg_partman's ``partition_data_proc``
   gets round it too. Nothing is lost or duplicated: it commits whole or not at all;
3. **create** every missing partition in ``[now - retention, now + premake]``, in batches (one
   transaction, a savepoint per partition: a window that fails is named, the others are made);
   a window whose partition name another table has (one ``expired="detach"`` kept, before the
   retention was lengthened) is reported and skipped;

then for every table again, tables that reference others by foreign key before those they
reference (PostgreSQL refuses to detach a partition whose rows are still referenced):

4. **finalize** a ``DETACH ... CONCURRENTLY`` an earlier run left half done;
5. **retire** partitions whose *whole* range ends at or before ``now - retention``: mark, detach,
   then drop (or keep, ``expired="detach"``), each its own short transaction so the parent is
   locked only for the detach. The mark is a ``sigma_db: detached partition of ...`` comment,
   which autogenerate leaves alone: ``(retention)`` on a partition kept, which is never
   dropped; ``(expired: to drop)`` on one to drop, which step 1 of a later run finds should
   this one stop before the drop. ``DETACH ... CONCURRENTLY`` is
   not allowed while the table has a DEFAULT partition (PostgreSQL's rule), so those tables use
   a plain ``DETACH`` under ``lock_timeout`` (it holds the parent's ACCESS EXCLUSIVE lock for
   about a millisecond);
   tables declared without a DEFAULT partition detach ``CONCURRENTLY``.

Partitions another login made (a superuser's run) are handed to the parent's owner, with the
parent's grants.

Rows in the DEFAULT partition that no window may take (older than the retention, or beyond the
premade range) stay there and are reported as a problem: the run's caller exits non-zero.

Runs are serialized by session-level advisory locks, one per database and schema
(:func:`maintenance_lock_key`): a second run exits at once (or waits
``wait`` seconds) and reports it was skipped; either way the result is that of one run, and a run
with nothing to do changes nothing. Every statement runs under ``lock_timeout``; a lock not
granted in time is retried, then reported, and the next run picks it up.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from sqlalchemy.engine import Engine

from sigma_db.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InsufficientPrivilegeError,
)
from sigma_db.identifiers import quote
from sigma_db.partitions.ddl import (
    bound_literal,
    create_default_sql,
    create_partition_sql,
    detach_sql,
    detached_comment,
    detached_comment_sql,
    drop_sql,
    physical_schema,
    qualified,
)
from sigma_db.partitions.declaration import PartitionedTable, partitioned_table
from sigma_db.partitions.windows import (
    Interval,
    PartitionWindow,
    as_utc,
    default_partition_name,
    partition_name,
    window_containing,
    windows_covering,
)
from sigma_db.settings import DatabaseSettings
from sigma_db.topology import Environment

__all__ = [
    "MaintenancePlan",
    "MaintenanceReport",
    "PartitionAction",
    "PartitionManager",
    "TablePlan",
    "maintenance_lock_key",
]

logger = logging.getLogger("sigma_db.partitions")


def maintenance_lock_key(database: str, schema: str) -> int:
    """The advisory lock a maintenance run holds for one schema of one database (signed 64 bit).

    One per schema, like the migrations' lock (``sigma_db.migrations.advisory_lock_key``) but a
    different key, so in the consolidated dev database each product's runs are serialized
    among themselves and never skip another product's.
    """
    seed = f"sigma_db.partitions:{database}:{schema}".encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big", signed=True)


_LOCK_RETRIES: Final = 3
_BOUNDS = re.compile(r"FOR VALUES FROM \((?P<lower>.+)\) TO \((?P<upper>.+)\)\Z")

ActionKind = Literal["drop", "finalize", "move", "create", "create_default", "retire"]


@dataclass(frozen=True)
class PartitionAction:
    """One step of a plan, with the SQL it runs (shown as-is by the dry run)."""

    kind: ActionKind
    partition: str
    statements: tuple[str, ...]
    window: PartitionWindow | None = None
    rows: int = 0
    """For ``move``: rows the DEFAULT partition holds for the window when planned."""
    concurrently: bool = False
    """For ``retire``: the detach runs ``CONCURRENTLY`` (outside a transaction)."""

    def describe(self) -> str:
        """One line for people: what happens to which partition."""
        span = ""
        if self.window is not None:
            span = f" [{self.window.start.date()}, {self.window.end.date()})"
        if self.kind == "move":
            return f"create {self.partition}{span} and move {self.rows} rows into it from DEFAULT"
        if self.kind == "create_default":
            return f"create DEFAULT partition {self.partition}"
        if self.kind == "drop":
            return f"drop {self.partition}, detached by an interrupted run (marked to drop)"
        drops = self.statements[-1].startswith("DROP TABLE")
        if self.kind == "finalize":
            then = " and drop it" if drops else " (kept as a plain table)"
            return f"finish the interrupted detach of {self.partition}{then}"
        if self.kind == "retire":
            how = "detach concurrently" if self.concurrently else "detach"
            if drops:
                return f"{how} and drop expired {self.partition}{span}"
            return f"{how} expired {self.partition}{span} (kept as a plain table)"
        return f"{self.kind} {self.partition}{span}"


@dataclass
class TablePlan:
    """What maintenance would do to one table, and what it cannot fix."""

    table: str
    """Schema-qualified parent name, as shown to people."""
    actions: list[PartitionAction] = field(default_factory=list)
    unplaced: dict[PartitionWindow, int] = field(default_factory=dict)
    """DEFAULT-partition rows no partition may take, by the window they belong to."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        """How many actions of ``kind`` the plan holds."""
        return sum(1 for action in self.actions if action.kind == kind)


@dataclass
class MaintenancePlan:
    """The actions for every table, as of ``now`` in ``environment``; pure description."""

    now: datetime
    environment: Environment
    tables: list[TablePlan]

    def lines(self, *, sql: bool = True) -> list[str]:
        """The plan as text: one line per action (and its SQL, indented), per table."""
        out: list[str] = []
        for plan in self.tables:
            if not plan.actions:
                out.append(f"{plan.table}: nothing to do")
            for action in plan.actions:
                out.append(f"{plan.table}: {action.describe()}")
                if sql:
                    out.extend(f"    {statement};" for statement in action.statements)
            out.extend(f"{plan.table}: note: {note}" for note in plan.notes)
        return out


@dataclass
class TableOutcome:
    """What one table's maintenance did."""

    table: str
    created: int = 0
    moved_rows: int = 0
    detached: int = 0
    dropped: int = 0
    problems: list[str] = field(default_factory=list)
    pending_detach: str | None = None
    """A partition this run left "detach pending" (its concurrent detach timed out): PostgreSQL
    allows one per table, so the table's other detaches wait for the next run."""

    def summary(self) -> str:
        """One line: counts of what was done."""
        return (
            f"{self.table}: created {self.created}, moved {self.moved_rows} rows out of DEFAULT, "
            f"detached {self.detached}, dropped {self.dropped}"
        )


@dataclass
class MaintenanceReport:
    """The result of :meth:`PartitionManager.maintain`: the plan, and what happened."""

    plan: MaintenancePlan | None
    outcomes: list[TableOutcome]
    dry_run: bool = False
    skipped: bool = False
    """True when another run held the lock, so this one did nothing (and that is fine)."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every table ended without a problem (the CLI's exit status)."""
        return not self.problem_lines()

    def problem_lines(self) -> list[str]:
        """One line per table with a problem, e.g. rows the DEFAULT partition still holds."""
        lines: list[str] = []
        if self.dry_run and self.plan is not None:
            for plan in self.plan.tables:
                if plan.problems:
                    lines.append(f"{plan.table}: {'; '.join(plan.problems)}")
            return lines
        for outcome in self.outcomes:
            if outcome.problems:
                lines.append(f"{outcome.table}: {'; '.join(outcome.problems)}")
        return lines


@dataclass(frozen=True)
class _Existing:
    """A partition as found in the catalog."""

    name: str
    lower: datetime | None  # None: MINVALUE, or the DEFAULT partition
    upper: datetime | None  # None: MAXVALUE, or the DEFAULT partition
    is_default: bool
    detach_pending: bool


@dataclass(frozen=True)
class _Catalog:
    """What the catalog says about one parent table."""

    schema: str
    exists: bool
    partitioned_by: str | None  # e.g. 'RANGE ("timestamp")', for people; None: not partitioned
    partitions: tuple[_Existing, ...]
    default_rows: dict[date, int]  # window start date -> rows in DEFAULT
    columns: tuple[str, ...] = ()
    """The parent's stored columns in the database (not the model's): what a move copies."""
    strategy: str | None = None
    """``pg_partitioned_table.partstrat``: ``r`` for RANGE; None when not partitioned."""
    key: tuple[str | None, ...] = ()
    """The partition key's columns by name (None for an expression), from ``partattrs``."""
    namespace: int = 0
    """The schema's oid."""
    marked_to_drop: tuple[str, ...] = ()
    """Plain tables in the schema marked ``(expired: to drop)`` for this parent: partitions an
    interrupted run detached but did not drop."""


class PartitionManager:
    """Keeps date-partitioned tables' partitions in step with time and retention.

    ``target`` is the product's :class:`~sigma_db.DatabaseSettings` (retention follows its
    ``DB_ENV``) or an :class:`~sqlalchemy.engine.Engine` (then pass ``environment``). ``models``
    are the ``DatePartitioned`` model classes (or their tables). The engine's login needs to
    own the tables (the migrator role): creating and detaching partitions is DDL. Given
    settings, :meth:`plan` and :meth:`maintain` check that first and raise
    :class:`~sigma_db.errors.InsufficientPrivilegeError` naming the product's migrator role
    when ``DB_USER`` is neither a superuser nor a member of it.
    """

    def __init__(
        self,
        target: DatabaseSettings | Engine,
        *models: Any,
        environment: Environment | str | None = None,
        lock_timeout: timedelta = timedelta(seconds=5),
        batch_size: int = 50,
    ) -> None:
        if isinstance(target, DatabaseSettings):
            from sigma_db.engine import create_engine

            # Through PgBouncer the maintenance lock and the session's SETs would stay on
            # whichever server connection it hands out: later runs would skip.
            problem = target.direct_connection_problem("Partition maintenance needs")
            if problem is not None:
                raise ConfigurationError(problem)
            self._engine = create_engine(target)
            self._settings: DatabaseSettings | None = target
            default_env: Environment | None = target.env
        elif isinstance(target, Engine):
            self._engine = target
            self._settings = None
            default_env = None
        else:
            raise ConfigurationError(
                "PartitionManager needs DatabaseSettings or an Engine, not "
                f"{type(target).__name__}."
            )
        chosen = environment if environment is not None else default_env
        if chosen is None:
            raise ConfigurationError(
                "PartitionManager was given an Engine, which does not say its environment; "
                "pass environment='dev'|'staging'|'prod' (retention depends on it)."
            )
        if str(chosen) not in Environment._value2member_map_:
            raise ConfigurationError(
                f"environment {chosen!r} is not one of dev, staging, prod; pass one of them."
            )
        self.environment = Environment(str(chosen))
        if not models:
            raise ConfigurationError(
                "PartitionManager has no tables to maintain; pass the DatePartitioned models, "
                "e.g. PartitionManager(settings, Signal, AuditLog)."
            )
        self.tables: tuple[PartitionedTable, ...] = tuple(partitioned_table(m) for m in models)
        self._retire_order = _referencing_first(self.tables)
        self.lock_timeout = lock_timeout
        self.batch_size = max(1, batch_size)

    # --- public API -------------------------------------------------------------------------

    def plan(self, now: datetime | None = None) -> MaintenancePlan:
        """Describe what :meth:`maintain` would do at ``now`` (default: the current time)."""
        moment = _now(now)
        with self._connection() as conn:
            return self._plan(conn, moment)

    def maintain(
        self,
        now: datetime | None = None,
        *,
        dry_run: bool = False,
        wait: float = 0,
        progress: Callable[[str], None] | None = None,
    ) -> MaintenanceReport:
        """Bring every table in line with ``now`` (default: the current time); see the module doc.

        ``dry_run`` plans and changes nothing. ``wait`` is how many seconds to wait for another
        run's lock (0: skip at once). ``progress`` receives one line per step as it happens (the
        same lines go to the ``sigma_db.partitions`` logger).
        """
        moment = _now(now)
        started = time.monotonic()
        say = _Progress(progress)
        with self._connection() as conn:
            if dry_run:
                plan = self._plan(conn, moment)
                return MaintenanceReport(plan, [], dry_run=True)
            keys = self._lock_keys(conn)
            if not _acquire(conn, keys, wait, self.lock_timeout):
                say("another maintenance run holds the lock; skipped (it does the same work)")
                return MaintenanceReport(None, [], skipped=True)
            try:
                plan = self._plan(conn, moment)
                outcomes = self._execute(conn, plan, say)
            finally:
                _release(conn, keys)
        report = MaintenanceReport(plan, outcomes, seconds=time.monotonic() - started)
        for outcome in outcomes:
            say(outcome.summary())
        return report

    def _lock_keys(self, conn: Any) -> list[int]:
        """One advisory lock key per schema the tables live in, in a fixed order."""
        options = self._engine.get_execution_options()
        database, current = conn.execute("SELECT current_database(), current_schema()").fetchone()
        schemas = {
            physical_schema(partitioned.table.schema, options) or current or "public"
            for partitioned in self.tables
        }
        return sorted({maintenance_lock_key(database, schema) for schema in schemas})

    # --- planning ---------------------------------------------------------------------------

    def _plan(self, conn: Any, now: datetime) -> MaintenancePlan:
        options = self._engine.get_execution_options()
        plans = []
        for partitioned in self.tables:
            schema = physical_schema(partitioned.table.schema, options)
            catalog = _read_catalog(conn, partitioned, schema)
            plan = self._plan_table(partitioned, catalog, now)
            _skip_taken_names(conn, catalog, plan)
            plans.append(plan)
        return MaintenancePlan(now, self.environment, plans)

    def _plan_table(
        self, partitioned: PartitionedTable, catalog: _Catalog, now: datetime
    ) -> TablePlan:
        display = f"{catalog.schema}.{partitioned.name}" if catalog.schema else partitioned.name
        plan = TablePlan(display)
        if not catalog.exists:
            plan.problems.append(
                "table does not exist; create it first (alembic upgrade head, with "
                "sigma_db.partitions.create_partitions in the revision that creates it)"
            )
            return plan
        expected = f"RANGE ({partitioned.partitioning.column})"
        # By the catalog's columns, not pg_get_partkeydef's text: it quotes a key column named
        # like a keyword (RANGE ("timestamp")).
        if catalog.strategy != "r" or catalog.key != (partitioned.partitioning.column,):
            found = catalog.partitioned_by or "not partitioned"
            plan.problems.append(
                f"table is {found}, but the model declares PARTITION BY {expected}; recreate it "
                "partitioned (a plain table cannot be converted in place)"
            )
            return plan
        declaration = partitioned.partitioning
        interval = partitioned.interval
        schema = catalog.schema
        retention = declaration.retention_for(self.environment)
        cutoff = now - retention if retention is not None else None
        current = window_containing(interval, now)
        last = current
        for _ in range(declaration.premake):
            last = last.next()
        first = window_containing(interval, cutoff) if cutoff is not None else current

        # 0. partitions an interrupted run detached to drop, and did not drop
        for name in catalog.marked_to_drop:
            plan.actions.append(PartitionAction("drop", name, (drop_sql(name, schema),)))

        managed: dict[PartitionWindow, _Existing] = {}
        foreign: list[_Existing] = []
        # Partitions made for another interval (the declaration changed): retention applies.
        retired_earlier: dict[PartitionWindow, _Existing] = {}
        default: _Existing | None = None
        for existing in catalog.partitions:
            if existing.detach_pending:
                # A run of ours starts a concurrent detach only of an expired partition, but a
                # person may have started one too: drop only what is wholly past the cutoff.
                pending = _managed_window(partitioned, existing)
                # One made for an earlier interval, whose retirement was interrupted, too.
                ours = pending or _earlier_interval_window(partitioned, existing)
                expired_window = ours is not None and cutoff is not None and ours.end <= cutoff
                to_drop = declaration.expired == "drop" and expired_window
                # Marked first: kept, it must never look like a table to drop; to drop, the next
                # run finds it should this one stop before the drop.
                statements = [
                    detached_comment_sql(partitioned.name, existing.name, schema, to_drop=to_drop),
                    detach_sql(
                        partitioned.name, existing.name, schema, concurrently=False, finalize=True
                    ),
                ]
                if to_drop:
                    statements.append(drop_sql(existing.name, schema))
                plan.actions.append(
                    PartitionAction("finalize", existing.name, tuple(statements), ours)
                )
                if pending is not None and not expired_window:
                    # Its name is the one the window's partition would take: not recreated.
                    managed[pending] = existing
                    plan.problems.append(
                        f"{existing.name} was left detaching though its range is still retained; "
                        "the detach is finished and the table kept (data intact): archive it, "
                        "then drop or rename it so maintenance recreates the partition"
                    )
                continue
            if existing.is_default:
                default = existing
                continue
            window = _managed_window(partitioned, existing)
            if window is None:
                foreign.append(existing)
                earlier = _earlier_interval_window(partitioned, existing)
                if earlier is not None:
                    retired_earlier[earlier] = existing
            else:
                managed[window] = existing

        def blocked(window: PartitionWindow) -> _Existing | None:
            for other in foreign:
                lower = other.lower or datetime.min.replace(tzinfo=UTC)
                upper = other.upper or datetime.max.replace(tzinfo=UTC)
                if lower < window.end and window.start < upper:
                    return other
            return None

        # 2. rows waiting in DEFAULT
        planned: set[PartitionWindow] = set()
        for start, rows in sorted(catalog.default_rows.items()):
            window = window_containing(interval, start)
            expired = cutoff is not None and window.end <= cutoff
            if expired or window > last or window in managed or blocked(window) is not None:
                plan.unplaced[window] = plan.unplaced.get(window, 0) + rows
                continue
            planned.add(window)
            plan.actions.append(
                PartitionAction(
                    "move",
                    partition_name(partitioned.name, window),
                    _move_statements(partitioned, schema, window, default, catalog.columns),
                    window,
                    rows,
                )
            )
        # 3. missing partitions
        for window in windows_covering(interval, first.start, last.start):
            if window in managed or window in planned:
                continue
            other = blocked(window)
            if other is not None:
                made_for = next(
                    (w.interval for w, e in retired_earlier.items() if e is other), None
                )
                why = (
                    f"made for a {made_for} window before the table's interval became {interval}"
                    if made_for is not None
                    else "which sigma_db did not create (its bounds are not one window)"
                )
                plan.problems.append(
                    f"window {window.suffix} overlaps partition {other.name}, {why}; left alone: "
                    "detach it, or move its rows and drop it, so maintenance can create the "
                    "window's partition"
                )
                continue
            plan.actions.append(
                PartitionAction(
                    "create",
                    partition_name(partitioned.name, window),
                    (create_partition_sql(partitioned, schema, window),),
                    window,
                )
            )
        if default is None and declaration.default_partition:
            plan.actions.append(
                PartitionAction(
                    "create_default",
                    default_partition_name(partitioned.name),
                    (create_default_sql(partitioned, schema),),
                )
            )
        # 4. expired partitions: only those whose whole range ends at or before the cutoff
        if cutoff is not None:
            concurrently = default is None and not declaration.default_partition
            expiring = sorted(managed.items()) + sorted(retired_earlier.items())
            for window, existing in expiring:
                if window.end > cutoff:
                    continue
                to_drop = declaration.expired == "drop"
                statements = [
                    detached_comment_sql(partitioned.name, existing.name, schema, to_drop=to_drop),
                    detach_sql(partitioned.name, existing.name, schema, concurrently=concurrently),
                ]
                if to_drop:
                    statements.append(drop_sql(existing.name, schema))
                plan.actions.append(
                    PartitionAction(
                        "retire",
                        existing.name,
                        tuple(statements),
                        window,
                        concurrently=concurrently,
                    )
                )
        if plan.unplaced:
            total = sum(plan.unplaced.values())
            windows = ", ".join(w.suffix for w in sorted(plan.unplaced))
            plan.problems.append(
                f"{_rows(total)} in DEFAULT partition {default.name if default else '?'} cannot be "
                f"placed (windows {windows}: older than the retention, beyond premake, or "
                "covered by another partition); see 'When the DEFAULT partition alerts' in the "
                "partitioning guide"
            )
        return plan

    # --- execution --------------------------------------------------------------------------

    def _execute(self, conn: Any, plan: MaintenancePlan, say: _Progress) -> list[TableOutcome]:
        """Every table's creates and moves first, then every table's retirements.

        Retirements go referencing tables first: with a foreign key between two partitioned
        tables (fills → orders), PostgreSQL refuses to detach an orders partition while a fills
        partition still references its rows, and the fills partition of the same day expires in
        the same run.
        """
        outcomes = [
            TableOutcome(table.table, problems=list(table.problems)) for table in plan.tables
        ]
        for table, outcome in zip(plan.tables, outcomes, strict=True):
            self._build(conn, table, outcome, say)
        for index in self._retire_order:
            for action in plan.tables[index].actions:
                if action.kind in ("retire", "finalize"):
                    self._retire(conn, plan.tables[index], action, outcomes[index], say)
        for table, outcome in zip(plan.tables, outcomes, strict=True):
            _hand_partitions_to_owner(conn, table.table, outcome)
        return outcomes

    def _build(self, conn: Any, plan: TablePlan, outcome: TableOutcome, say: _Progress) -> None:
        """Drop what an interrupted run left to drop, move rows out of DEFAULT, create."""
        creates: list[PartitionAction] = []
        for action in plan.actions:
            if action.kind in ("retire", "finalize"):
                continue
            if action.kind == "create":
                creates.append(action)
                continue
            if creates:
                self._create_batch(conn, plan, creates, outcome, say)
                creates = []
            self._run_one(conn, plan, action, outcome, say)
        if creates:
            self._create_batch(conn, plan, creates, outcome, say)

    def _create_batch(
        self,
        conn: Any,
        plan: TablePlan,
        creates: list[PartitionAction],
        outcome: TableOutcome,
        say: _Progress,
    ) -> None:
        for chunk in _chunks(creates, self.batch_size):
            self._create_chunk(conn, plan, chunk, outcome, say)

    def _create_chunk(
        self,
        conn: Any,
        plan: TablePlan,
        chunk: Sequence[PartitionAction],
        outcome: TableOutcome,
        say: _Progress,
    ) -> None:
        """One transaction for the chunk, a savepoint for each partition in it.

        A window that fails (rows for it reached DEFAULT after planning, its name taken since)
        is reported under its own name and the chunk's other partitions are still created. A
        lock not granted fails the chunk whole, which is retried, then reported, like any
        statement.
        """
        created: list[PartitionAction] = []
        failed: list[str] = []

        def body() -> None:
            created.clear()
            failed.clear()
            for action in chunk:
                try:
                    with conn.transaction():
                        conn.execute(action.statements[0])
                except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                    raise
                except psycopg.Error as exc:
                    failed.append(_create_problem(action, exc))
                else:
                    created.append(action)

        what = chunk[0].partition
        if len(chunk) > 1:
            what = f"{what} .. {chunk[-1].partition} ({len(chunk)} partitions)"
        if not self._with_retries(conn, plan, body, outcome, what=what):
            return
        for problem in failed:
            outcome.problems.append(problem)
            logger.error("%s: %s", plan.table, problem)
        outcome.created += len(created)
        if len(created) == 1:
            say(f"{plan.table}: created {created[0].partition}")
        elif created:
            say(
                f"{plan.table}: created {len(created)} partitions "
                f"({created[0].partition} .. {created[-1].partition})"
            )

    def _run_one(
        self,
        conn: Any,
        plan: TablePlan,
        action: PartitionAction,
        outcome: TableOutcome,
        say: _Progress,
    ) -> None:
        if action.kind == "move":
            moved = self._move(conn, plan, action, outcome)
            if moved is not None:
                outcome.created += 1
                outcome.moved_rows += moved
                say(f"{plan.table}: created {action.partition}, moved {moved} rows from DEFAULT")
            return
        if self._transaction(conn, plan, action.statements, outcome, what=action.partition):
            if action.kind == "create_default":
                outcome.created += 1
            elif action.kind == "drop":
                outcome.dropped += 1
            say(f"{plan.table}: {action.describe()}")

    def _move(
        self, conn: Any, plan: TablePlan, action: PartitionAction, outcome: TableOutcome
    ) -> int | None:
        moved = 0

        def body() -> None:
            nonlocal moved
            *locks, temp, delete, create, insert = action.statements
            for lock in locks:
                conn.execute(lock)
            conn.execute(temp)
            moved = conn.execute(delete).rowcount
            conn.execute(create)
            inserted = conn.execute(insert).rowcount
            if inserted != moved:  # pragma: no cover - would be a PostgreSQL bug
                raise RuntimeError(f"moved {moved} rows but inserted {inserted}")

        if self._with_retries(conn, plan, body, outcome, what=action.partition):
            return moved
        return None

    def _retire(
        self,
        conn: Any,
        plan: TablePlan,
        action: PartitionAction,
        outcome: TableOutcome,
        say: _Progress,
    ) -> None:
        """Mark, detach (or finalize a detach), drop: each its own transaction.

        The detach is the only step that locks the parent, and it is quick; dropping a big table
        frees its files at commit, which takes time proportional to its size. Separate, the
        parent is locked for the detach alone. ``DETACH ... CONCURRENTLY`` cannot run in a
        transaction block anyway; interrupted between its two internal transactions, the
        partition stays "detach pending" and the next run finalizes it.
        """
        at = next(i for i, sql in enumerate(action.statements) if " DETACH PARTITION " in sql)
        before, detach, after = (
            action.statements[:at],
            action.statements[at],
            action.statements[at + 1 :],
        )
        concurrent = " CONCURRENTLY" in detach
        if concurrent and outcome.pending_detach is not None:
            outcome.problems.append(
                f"{action.partition}: waits until {outcome.pending_detach} finishes detaching "
                "(one pending detach per table); the next run finishes that, then retires this"
            )
            return
        # Marked before it is detached (the comment keeps autogenerate from proposing to drop a
        # kept one, and lets the next run find one to drop), so no crash can leave an unmarked
        # plain table behind.
        if before and not self._transaction(conn, plan, before, outcome, what=action.partition):
            return

        def body() -> None:
            conn.execute(detach)

        # Once a concurrent detach timed out after its first step, the partition is "detach
        # pending" and the same statement again fails: one attempt, the next run finishes it.
        if not self._with_retries(
            conn,
            plan,
            body,
            outcome,
            what=action.partition,
            transaction=False,
            attempts=1 if concurrent else _LOCK_RETRIES,
        ):
            schema = plan.table.rpartition(".")[0]
            child = f"{schema}.{action.partition}" if schema else action.partition
            pending = conn.execute(
                "SELECT inhdetachpending FROM pg_catalog.pg_inherits "
                "WHERE inhrelid = to_regclass(%s)",
                (child,),
            ).fetchone()
            if concurrent and pending == (True,):
                outcome.pending_detach = action.partition
                outcome.problems[-1] += "; it is left detach pending, which the next run finishes"
            return
        outcome.detached += 1
        if after:
            if not self._transaction(conn, plan, after, outcome, what=action.partition):
                outcome.problems[-1] += "; it is detached and marked to drop: the next run drops it"
                return
            outcome.dropped += 1
        say(f"{plan.table}: {action.describe().replace('expired ', '', 1)}")

    def _transaction(
        self,
        conn: Any,
        plan: TablePlan,
        statements: Sequence[str],
        outcome: TableOutcome,
        *,
        what: str,
    ) -> bool:
        def body() -> None:
            for statement in statements:
                conn.execute(statement)

        return self._with_retries(conn, plan, body, outcome, what=what)

    def _with_retries(
        self,
        conn: Any,
        plan: TablePlan,
        body: Callable[[], None],
        outcome: TableOutcome,
        *,
        what: str,
        transaction: bool = True,
        attempts: int = _LOCK_RETRIES,
    ) -> bool:
        import psycopg

        for attempt in range(1, attempts + 1):
            try:
                if transaction:
                    with conn.transaction():
                        body()
                else:
                    body()
                return True
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                # A deadlock with an application's statement aborts one side; ours retries.
                if attempt == attempts:
                    if isinstance(exc, psycopg.errors.DeadlockDetected):
                        outcome.problems.append(
                            f"{what}: deadlock with another session after {attempt} attempts; "
                            "the next run retries"
                        )
                        logger.warning("%s: %s", plan.table, outcome.problems[-1])
                        return False
                    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
                    outcome.problems.append(
                        f"{what}: lock not granted within lock_timeout "
                        f"{self.lock_timeout.total_seconds():g}s after {tries} (the "
                        "table is busy); the next run retries"
                    )
                    logger.warning("%s: %s", plan.table, outcome.problems[-1])
                    return False
                time.sleep(0.2 * attempt)
            except psycopg.Error as exc:
                message = " ".join(str(exc).split())
                outcome.problems.append(f"{what}: {message}")
                logger.error("%s: %s", plan.table, outcome.problems[-1])
                return False
        return False  # pragma: no cover

    # --- connection -------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A dedicated psycopg connection: autocommit, TimeZone UTC, DateStyle ISO, lock_timeout.

        It is detached from the engine's pool, so the session settings never reach application
        code; ``DETACH ... CONCURRENTLY`` needs autocommit (it cannot run in a transaction).
        """
        raw = self._connect()
        conn = raw.driver_connection
        assert conn is not None
        raw.detach()
        try:
            conn.rollback()
            conn.autocommit = True
            milliseconds = int(self.lock_timeout.total_seconds() * 1000)
            # Partition bounds are read back as text (pg_get_expr), which follows DateStyle:
            # fix the session's, whatever the database or role sets.
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET DateStyle = 'ISO, MDY'")
            conn.execute(f"SET lock_timeout = {milliseconds:d}")
            if self._settings is not None:
                _check_migrator(conn, self._settings)
            yield conn
        finally:
            conn.close()

    def _connect(self) -> Any:
        """The engine's raw connection; a failure to connect is a :class:`DatabaseUnavailableError`.

        ``Engine.raw_connection`` bypasses the engine's error translation, so it is done here:
        one line with the fix (and no password), not a driver traceback.
        """
        import psycopg
        from sqlalchemy.exc import DBAPIError

        try:
            return self._engine.raw_connection()
        except (psycopg.OperationalError, DBAPIError) as exc:
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            if not isinstance(cause, psycopg.OperationalError):
                raise
            if self._settings is not None:
                from sigma_db.engine import _unavailable

                raise _unavailable(self._settings, cause) from cause
            where = self._engine.url.render_as_string(hide_password=True)
            reason = " ".join(str(cause).split()).rstrip(" .?")
            raise DatabaseUnavailableError(
                f"Cannot connect to {where}: {reason}. Is the server running and reachable?"
            ) from cause


_ROLE = """
SELECT r.rolsuper,
       pg_has_role(current_user, to_regrole(%(migrator)s), 'USAGE'),
       pg_has_role(current_user, to_regrole(%(migrator)s), 'MEMBER'),
       to_regrole(%(migrator)s) IS NOT NULL
FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""


def _check_migrator(conn: Any, settings: DatabaseSettings) -> None:
    """Refuse, before any work, a login that is neither a superuser nor the product's migrator.

    Creating, attaching and detaching partitions is DDL on tables the migrator group role owns:
    run as the API's ``_rw`` role, every partition would fail on its own ("permission denied
    for schema", "must be owner of table"), one line each, without naming the role to use.
    """
    from sigma_db.roles import RoleKind, group_role

    migrator = group_role(settings.topology.product, RoleKind.MIGRATOR)
    row = conn.execute(_ROLE, {"migrator": migrator}).fetchone()
    superuser, usable, member, exists = row if row is not None else (False, None, None, False)
    if superuser or usable:
        return
    who = f"DB_USER ({settings.user})"
    if not exists:
        why = (
            f"{who} is not a member of {migrator}, and that role does not exist on this server: "
            "check that DB_PRODUCT/DB_SCHEMA name this product, and create its roles with "
            "sigma-db roles apply"
        )
    elif member:
        why = (
            f"{who} is a member of {migrator} but does not inherit its privileges (NOINHERIT): "
            "run it with a login that inherits them"
        )
    else:
        why = (
            f"{who} is not a member of {migrator}, the role that owns the product's schemas and "
            "tables: run it with the migrator's credentials (a login of that role, see sigma-db "
            "roles apply --login NAME:migrator) or a superuser's"
        )
    raise InsufficientPrivilegeError(
        f"partition maintenance creates and detaches partitions (DDL): {why}"
    )


class _Progress:
    def __init__(self, sink: Callable[[str], None] | None) -> None:
        self._sink = sink

    def __call__(self, line: str) -> None:
        logger.info("%s", line)
        if self._sink is not None:
            self._sink(line)


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else as_utc(now)


def _acquire(conn: Any, keys: Sequence[int], wait: float, lock_timeout: timedelta) -> bool:
    """Take every key (sorted, so two runs never wait on each other in a cycle), or none."""
    import psycopg

    held: list[int] = []
    if wait > 0:
        conn.execute(f"SET lock_timeout = {int(wait * 1000):d}")
    try:
        for key in keys:
            if wait <= 0:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if not row[0]:
                    break
            else:
                try:
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                except psycopg.errors.LockNotAvailable:
                    break
            held.append(key)
    finally:
        if wait > 0:
            conn.execute(f"SET lock_timeout = {int(lock_timeout.total_seconds() * 1000):d}")
    if len(held) == len(keys):
        return True
    _release(conn, held)
    return False


def _release(conn: Any, keys: Sequence[int]) -> None:
    for key in reversed(keys):
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _read_catalog(conn: Any, partitioned: PartitionedTable, schema: str | None) -> _Catalog:
    row = conn.execute(
        """
        SELECT c.oid, n.nspname,
               CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
               pt.partstrat::text,
               ARRAY(SELECT a.attname::text
                     FROM unnest(pt.partattrs::int2[]) WITH ORDINALITY AS k(attnum, ord)
                     LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                     ORDER BY k.ord),
               n.oid
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
        WHERE c.oid = to_regclass(%s)
        """,
        (qualified(schema, partitioned.name),),
    ).fetchone()
    if row is None:
        return _Catalog(schema or "", False, None, (), {})
    oid, actual_schema, keydef, strategy, key, namespace = row
    columns = tuple(
        str(name)
        for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (oid,),
        ).fetchall()
    )
    partitions = tuple(
        _existing(name, bound, pending, partitioned.key_is_date)
        for name, bound, pending in conn.execute(
            """
            SELECT child.relname, pg_get_expr(child.relpartbound, child.oid), i.inhdetachpending
            FROM pg_inherits i JOIN pg_class child ON child.oid = i.inhrelid
            WHERE i.inhparent = %s
            ORDER BY child.relname
            """,
            (oid,),
        ).fetchall()
    )
    default_rows: dict[date, int] = {}
    default = next((p for p in partitions if p.is_default and not p.detach_pending), None)
    if default is not None and keydef is not None:
        column = quote(partitioned.partitioning.column)
        unit = partitioned.interval.value
        for start, rows in conn.execute(
            f"SELECT date_trunc('{unit}', {column})::date, count(*) "  # noqa: S608 - quoted
            f"FROM {qualified(actual_schema, default.name)} GROUP BY 1"
        ).fetchall():
            default_rows[start] = rows
    marked_to_drop = tuple(
        str(name)
        for (name,) in conn.execute(
            """
            SELECT relname FROM pg_class
            WHERE relnamespace = %s AND relkind = 'r' AND NOT relispartition
              AND obj_description(oid, 'pg_class') = %s
            ORDER BY relname
            """,
            (namespace, detached_comment(partitioned.name, to_drop=True)),
        ).fetchall()
    )
    return _Catalog(
        actual_schema,
        True,
        keydef,
        partitions,
        default_rows,
        columns,
        strategy=strategy,
        key=tuple(key or ()),
        namespace=namespace,
        marked_to_drop=marked_to_drop,
    )


def _existing(name: str, bound: str, pending: bool, key_is_date: bool) -> _Existing:
    if bound == "DEFAULT":
        return _Existing(name, None, None, is_default=True, detach_pending=pending)
    match = _BOUNDS.match(bound)
    if match is None:
        return _Existing(name, None, None, is_default=False, detach_pending=pending)
    return _Existing(
        name,
        _parse_bound(match["lower"]),
        _parse_bound(match["upper"]),
        is_default=False,
        detach_pending=pending,
    )


def _parse_bound(text: str) -> datetime | None:
    text = text.strip()
    if not (text.startswith("'") and text.endswith("'")):
        return None  # MINVALUE / MAXVALUE
    value = text[1:-1]
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # a date key: '2026-11-27'
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _managed_window(partitioned: PartitionedTable, existing: _Existing) -> PartitionWindow | None:
    """The window ``existing`` covers exactly, or None when its bounds are not ours."""
    if existing.lower is None or existing.upper is None:
        return None
    window = window_containing(partitioned.interval, existing.lower)
    if window.start == existing.lower and window.end == existing.upper:
        return window
    return None


def _earlier_interval_window(
    partitioned: PartitionedTable, existing: _Existing
) -> PartitionWindow | None:
    """The window of another interval ``existing`` was made for, by its bounds and its name.

    A table whose declared interval changed (day → month) keeps the partitions made before;
    they are sigma_db's, so retention still retires them once wholly past the cutoff.
    """
    if existing.lower is None or existing.upper is None:
        return None
    for interval in Interval:
        if interval == partitioned.interval:
            continue
        window = window_containing(interval, existing.lower)
        if (window.start, window.end) == (existing.lower, existing.upper) and (
            existing.name == partition_name(partitioned.name, window)
        ):
            return window
    return None


def _move_statements(
    partitioned: PartitionedTable,
    schema: str | None,
    window: PartitionWindow,
    default: _Existing | None,
    stored: Sequence[str] = (),
) -> tuple[str, ...]:
    """The six statements that move one window's rows out of DEFAULT, run in one transaction.

    The parent is locked first, then DEFAULT: the order an INSERT into the parent takes them
    (parent, then the partition it routes to). Locking DEFAULT first would deadlock with such an
    insert, since ``CREATE TABLE ... PARTITION OF`` needs the parent's ACCESS EXCLUSIVE lock.
    """
    assert default is not None
    source = qualified(schema, default.name)
    # Every stored column the database has (a column the model lacks is kept, not NULLed);
    # generated columns are computed again on insert and may not be written.
    names = stored or [c.name for c in partitioned.table.columns]
    columns = ", ".join(quote(name) for name in names)
    key = quote(partitioned.partitioning.column)
    lower = bound_literal(window.start, key_is_date=partitioned.key_is_date)
    upper = bound_literal(window.end, key_is_date=partitioned.key_is_date)
    child = qualified(schema, partition_name(partitioned.name, window))
    return (
        f"LOCK TABLE ONLY {qualified(schema, partitioned.name)} IN ACCESS EXCLUSIVE MODE",
        f"LOCK TABLE {source} IN ACCESS EXCLUSIVE MODE",
        f"CREATE TEMPORARY TABLE sigma_db_moving (LIKE {qualified(schema, partitioned.name)}) "
        "ON COMMIT DROP",
        f"WITH moved AS (DELETE FROM {source} WHERE {key} >= {lower} AND {key} < {upper} "  # noqa: S608
        f"RETURNING {columns}) INSERT INTO sigma_db_moving ({columns}) SELECT {columns} FROM moved",
        create_partition_sql(partitioned, schema, window),
        f"INSERT INTO {child} ({columns}) OVERRIDING SYSTEM VALUE "  # noqa: S608 - quoted names
        f"SELECT {columns} FROM sigma_db_moving",
    )


def _referencing_first(tables: Sequence[PartitionedTable]) -> list[int]:
    """Indexes of ``tables``, each table before the tables it references by a foreign key.

    Referenced tables come first in dependency order (as ``MetaData.sorted_tables`` has them);
    retirements run in the reverse of that. Tables with no key between them keep their order,
    reversed; a cycle of keys is cut where it closes.
    """
    index = {partitioned.table.fullname: i for i, partitioned in enumerate(tables)}
    ordered: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        seen.add(i)
        for constraint in tables[i].table.foreign_key_constraints:
            referred = constraint.elements[0].target_fullname.rpartition(".")[0]
            j = index.get(referred)
            if j is not None and j not in seen:
                visit(j)
        ordered.append(i)

    for i in range(len(tables)):
        if i not in seen:
            visit(i)
    return ordered[::-1]


def _skip_taken_names(conn: Any, catalog: _Catalog, plan: TablePlan) -> None:
    """Take out of ``plan`` the creates and moves whose partition name another relation has.

    Typically a partition ``expired="detach"`` kept, once the retention was lengthened: its
    window is back, and ``CREATE TABLE`` would fail on the name (and, in one transaction with
    the other creates, take them down too). Said once, per window, with the fix. Tables marked
    to drop are not in the way: this run drops them before it creates anything.
    """
    wanted = {a.partition: a for a in plan.actions if a.kind in ("create", "move")}
    if not wanted:
        return
    taken = {
        name: (kind, is_partition)
        for name, kind, is_partition in conn.execute(
            "SELECT relname, relkind::text, relispartition FROM pg_class "
            "WHERE relnamespace = %s AND relname = ANY(%s)",
            (catalog.namespace, list(wanted)),
        ).fetchall()
        if name not in catalog.marked_to_drop
    }
    for name, (kind, is_partition) in sorted(taken.items()):
        action = wanted[name]
        assert action.window is not None
        where = f"{catalog.schema}.{name}"
        if kind == "r" and not is_partition:
            by = f"table {where} (a detached partition kept by retention?)"
        else:
            by = f"{'partition' if is_partition else _RELATION_KINDS.get(kind, 'relation')} {where}"
        problem = (
            f"window {action.window.suffix}: name {name} taken by {by}: rename or drop it, so "
            "maintenance can create the window's partition"
        )
        if action.kind == "move":
            problem += f" (DEFAULT keeps its {_rows(action.rows)} until then)"
        plan.problems.append(problem)
        plan.actions.remove(action)


_RELATION_KINDS: Final = {
    "p": "partitioned table",
    "i": "index",
    "I": "partitioned index",
    "S": "sequence",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "c": "composite type",
}


def _create_problem(action: PartitionAction, exc: psycopg.Error) -> str:
    """The problem line for one partition that could not be created."""
    message = " ".join(str(exc).split())
    if isinstance(exc, psycopg.errors.CheckViolation):
        message += (
            "; rows for its window reached the DEFAULT partition during this run: the next run "
            "moves them"
        )
    return f"{action.partition}: {message}"


def _chunks(items: Sequence[PartitionAction], size: int) -> Iterable[Sequence[PartitionAction]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


_STRAY_OWNERS = """
SELECT format('%%I.%%I', n.nspname, c.relname), pg_get_userbyid(p.relowner)
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = to_regclass(%s) AND c.relowner <> p.relowner
  AND pg_has_role(current_user, c.relowner, 'MEMBER')
  AND pg_has_role(current_user, p.relowner, 'MEMBER')
ORDER BY 1
"""


_PARENT_GRANTS = """
SELECT CASE WHEN g.grantee = 0 THEN NULL ELSE pg_get_userbyid(g.grantee) END,
       g.privilege_type, g.is_grantable
FROM pg_catalog.pg_class p CROSS JOIN LATERAL pg_catalog.aclexplode(p.relacl) g
WHERE p.oid = to_regclass(%s) AND g.grantee <> p.relowner
ORDER BY 1 NULLS FIRST, 2
"""

_TABLE_PRIVILEGES: Final = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)


def _hand_partitions_to_owner(conn: Any, table: str, outcome: TableOutcome) -> None:
    """Hand partitions another login made (a superuser's run) to the parent's owner, grants too.

    Partitions belong to their creator: run as ``postgres``, maintenance made partitions that
    the migrator's later runs could not comment and detach ("must be owner"). Only what this
    login may hand over is handed over; the migrator cannot take a superuser's tables.

    The owner's default privileges grant the product's roles access to what the owner creates,
    not to what a superuser creates: such a partition had no grants at all, so ``_ro`` could not
    read it directly and ``sigma-db roles plan`` reported drift. It gets the parent's grants
    (every entry but the owner's, ``PUBLIC`` and grant options included), in the transaction
    that hands it over, so it is never left handed over without them.
    """
    strays = conn.execute(_STRAY_OWNERS, (table,)).fetchall()
    if not strays:
        return
    grants: dict[tuple[str | None, bool], list[str]] = {}
    for grantee, privilege, grantable in conn.execute(_PARENT_GRANTS, (table,)).fetchall():
        if privilege in _TABLE_PRIVILEGES:
            grants.setdefault((grantee, grantable), []).append(privilege)
    for child, owner in strays:
        target = sql.SQL(child)  # format('%I.%I') quoted it
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER TABLE {} OWNER TO {}").format(target, sql.Identifier(owner))
                )
                for (grantee, grantable), privileges in grants.items():
                    conn.execute(
                        sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
                            sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                            target,
                            sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                            sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                        )
                    )
        except psycopg.Error as exc:
            outcome.problems.append(f"{child}: {' '.join(str(exc).split())}")


def _rows(count: int) -> str:
    return "1 row" if count == 1 else f"{count} rows"
