"""The one entry point a product's ``migrations/env.py`` calls: :func:`run_migrations`.

A product's whole ``env.py``::

    from sigma_db.migrations import run_migrations
    from lab.models import Base

    run_migrations(Base.metadata)

Online it: reads :class:`~sigma_db.DatabaseSettings` (the migrator's credentials in CI/CD);
connects directly (never through a transaction pooler: session state is needed); takes a
session-level advisory lock keyed on the product schema so concurrent runners serialize; creates
the default schema if missing; keeps ``alembic_version`` and the ledger there; runs each revision
in its own transaction after ``SET lock_timeout`` / ``SET statement_timeout`` (defaults below,
overridable per revision); and writes the revision's ledger row in that same transaction.
Offline (``--sql``) it renders the same statements, bookkeeping included, without a database.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg.sql
from alembic import context as alembic_context
from alembic.operations.ops import MigrationScript
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo, RevisionStep
from alembic.script import Script
from alembic.script.revision import RevisionError
from sqlalchemy import MetaData, bindparam, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SAWarning, SQLAlchemyError
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.dml import Insert, UpdateBase

from sigma_db.errors import ConfigurationError, SigmaDBError
from sigma_db.identifiers import quote
from sigma_db.migrations.autogenerate import (
    AutogenerateScope,
    default_schema_relations,
    drop_sdk_info,
    install_logical_area_hook,
    physical_metadata,
    unmanaged_relations,
)
from sigma_db.migrations.checksum import file_checksum
from sigma_db.migrations.errors import MigrationError
from sigma_db.migrations.layout import product_mismatch
from sigma_db.migrations.ledger import (
    APPLIED_BY,
    LEDGER_TABLE,
    Operation,
    applied_revisions,
    client_name,
    history_findings,
    ledger_table,
    read_ledger,
)
from sigma_db.migrations.ops import (
    TOPOLOGY_KEY,
    VERSION_CHECK_KEY,
    OutsideTransactionFailure,
    create_schema_statement,
    sql_literal,
    version_check_block,
)
from sigma_db.migrations.revisions import (
    missing_downgrade,
    number_revisions,
    revision_files,
    revision_phase,
    revision_tree_problems,
    timeout_setting,
)
from sigma_db.settings import DatabaseSettings
from sigma_db.topology import DEFAULT_SCHEMA, Environment, Product, Topology

__all__ = [
    "ALEMBIC_PIN",
    "ALEMBIC_RANGE",
    "APPLIED_KEY",
    "BOOKKEEPING_KEY",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_STATEMENT_TIMEOUT",
    "REVISION_MARK",
    "SETTINGS_KEY",
    "acquire_advisory_lock",
    "advisory_lock_key",
    "bookkeeping_revokes",
    "check_alembic_version",
    "database_failure",
    "migration_engine",
    "release_advisory_lock",
    "revoke_bookkeeping_writes",
    "run_migrations",
    "unsupported_alembic",
]

DEFAULT_LOCK_TIMEOUT = "5s"
"""Give up on a table lock after 5 s rather than queue every reader behind the migration."""
DEFAULT_STATEMENT_TIMEOUT = "15min"
"""Bound any single statement; long backfills use :func:`~sigma_db.migrations.run_in_batches`."""

MIGRATIONS = "Migrations need"
"""How :meth:`~sigma_db.DatabaseSettings.direct_connection_problem` starts for migrations."""

SETTINGS_KEY = "sigma_db.settings"
"""``Config.attributes`` key: settings handed in by a caller (the CLI, tests) instead of DB_*."""
BOOKKEEPING_KEY = "sigma_db.bookkeeping"
"""``Config.attributes`` key: ``False`` renders revisions only, without ledger SQL (dry run)."""
APPLIED_KEY = "sigma_db.applied"
"""``Config.attributes`` key: list the environment appends ``"upgrade 0002"``-style lines to."""
REVISION_MARK = "-- sigma-db: revision "
"""Offline output marks where each revision's statements start."""

log = logging.getLogger("sigma_db.migrations")

ALEMBIC_RANGE = ((1, 13), (1, 21))
"""Alembic versions the env was tested with (``>=1.13,<1.21``), as in pyproject.toml.

The env relies on Alembic internals (``alembic.context._proxy``, ``context_opts["fn"]`` and
``["revision_context"]``, replacing ``RevisionStep.migration_fn``, and wrapping
``MigrationContext.impl._exec`` to put the ledger row into the version-table statements Alembic's
``HeadMaintainer`` builds, with ``literal_column`` values and a rowcount it checks); outside this
range it refuses to run rather than risk a migration or a dry run that silently skips its checks.
"""
ALEMBIC_PIN = "alembic>={}.{},<{}.{}".format(*ALEMBIC_RANGE[0], *ALEMBIC_RANGE[1])

_TIMEOUTS = ("lock_timeout", "statement_timeout")
_SESSION_TIMEOUTS = ", ".join(f"current_setting('{name}')" for name in _TIMEOUTS)
"""What the version-table statement returns besides: the timeouts the session has by then."""
_LEDGER_VALUES = (
    "revision",
    "operation",
    "description",
    "phase",
    "checksum",
    "client",
    "duration_ms",
    "success",
)
"""The ledger columns each row sets (``applied_by`` is the server's ``session_user``)."""


def run_migrations(
    target_metadata: MetaData | Sequence[MetaData] | None,
    *,
    settings: DatabaseSettings | None = None,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: str | None = DEFAULT_STATEMENT_TIMEOUT,
) -> None:
    """Run the current Alembic command (upgrade, downgrade, revision, check, ...) for a product.

    ``settings`` defaults to what the caller put in ``config.attributes["sigma_db.settings"]``,
    else ``DatabaseSettings()`` from the environment. Errors the user can fix surface as one
    :class:`MigrationError` line.
    """
    run: _Run | None = None
    try:
        run = _Run(
            _current_environment(),
            settings,
            {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout},
        )
        run.run(target_metadata)
    except MigrationError:
        raise
    except SigmaDBError as exc:
        raise MigrationError(str(exc)) from exc
    except SQLAlchemyError as exc:
        if run is not None and run.uncommitted:  # the revision ran; its COMMIT failed
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            raise MigrationError(
                f"{', '.join(run.uncommitted)} failed at COMMIT: {reason}; its transaction was "
                "rolled back: the version table and the ledger are unchanged. Fix the revision "
                "(a deferred constraint, say) and run the migration again."
            ) from exc
        # Outside any revision (those raise MigrationError): the lock, the schema, the version
        # table or the ledger. Usually the login lacks the migrator's privileges.
        if run is None or run.settings is None:
            raise
        raise MigrationError(database_failure(run.settings, exc)) from exc


def database_failure(
    settings: DatabaseSettings, exc: SQLAlchemyError, doing: str = "migrate"
) -> str:
    """One line for a database error outside any revision, with the likely fix."""
    from sigma_db.roles import RoleKind, group_role

    orig = getattr(exc, "orig", None)
    reason = " ".join(str(orig if orig is not None else exc).split())
    migrator = group_role(settings.topology.product, RoleKind.MIGRATOR)
    where = f"{settings.display_dsn} schema {settings.topology.schema}"
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    lost = sqlstate.startswith(("08", "57P")) and sqlstate != "08P01"  # not protocol_violation
    if getattr(exc, "connection_invalidated", False) or lost:
        # connection_exception, admin_shutdown, crash_shutdown, cannot_connect_now
        return (
            f"cannot {doing} {where}: {reason}; the connection to the server was lost (a "
            "restart or failover?): what was committed before stays, run the command again"
        )
    if sqlstate == "42501":  # insufficient_privilege
        return (
            f"cannot {doing} {where}: {reason}; DB_USER ({settings.user}) must be a member of "
            f"{migrator} (the role that owns the product's schemas): use the migrator's "
            "credentials, or grant it with sigma-db roles"
        )
    return (
        f"cannot {doing} {where}: {reason}; check DB_* (DB_USER must be a member of "
        f"{migrator}) and that DB_SCHEMA names this product's schema"
    )


def check_alembic_version() -> None:
    """Raise :class:`MigrationError` if the running Alembic is outside :data:`ALEMBIC_RANGE`."""
    import alembic

    version = str(alembic.__version__)
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        found = ()
    if len(found) != 2 or not ALEMBIC_RANGE[0] <= found < ALEMBIC_RANGE[1]:
        raise MigrationError(
            f"Alembic {version} is not supported by this sigma_db (it relies on Alembic "
            f"internals tested with {ALEMBIC_PIN}); install a supported one: "
            f"pip install '{ALEMBIC_PIN}'"
        )


def unsupported_alembic(what: str) -> MigrationError:
    """The error for an Alembic whose internals no longer behave as the env expects."""
    import alembic

    return MigrationError(
        f"this Alembic version {alembic.__version__} is not supported by sigma_db: {what}; "
        f"pin '{ALEMBIC_PIN}'"
    )


def _current_environment() -> EnvironmentContext:
    # alembic.context is a module-level proxy onto the EnvironmentContext of the running command;
    # context_opts (the command's plan function) is only reachable on the object itself.
    env = getattr(alembic_context, "_proxy", None)
    if not isinstance(env, EnvironmentContext):
        raise ConfigurationError(
            "run_migrations() runs inside an Alembic command: call it from migrations/env.py and "
            "run `alembic upgrade head` or `sigma-db migrate` in the product repository."
        )
    return env


def migration_engine(settings: DatabaseSettings) -> Engine:
    """The engine every migration verb uses: a single connection, no pre-ping."""
    from sigma_db.engine import create_engine

    return create_engine(settings, pool_size=1, pool_pre_ping=False, execution_options={})


def advisory_lock_key(topology: Topology) -> int:
    """The advisory lock every migration runner of this product schema takes (signed 64 bit)."""
    seed = f"sigma_db.migrations:{topology.database}:{topology.schema}".encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big", signed=True)


def acquire_advisory_lock(connection: Connection, key: int, *, poll: float = 0.05) -> None:
    """Take the session-level advisory lock ``key``, waiting for it without holding a snapshot.

    A waiting ``SELECT pg_advisory_lock(...)`` keeps its snapshot for as long as it waits, and a
    ``CREATE INDEX CONCURRENTLY`` in the lock holder's run waits for every older snapshot: the
    two would deadlock. So the wait polls ``pg_try_advisory_lock`` between transactions
    (``poll`` seconds at first, backing off to one second). Commits before returning, so
    whatever the caller reads next is current.
    """
    while not connection.execute(select(func.pg_try_advisory_lock(key))).scalar():
        connection.commit()
        time.sleep(poll)
        poll = min(poll * 2, 1.0)
    connection.commit()


def release_advisory_lock(connection: Connection, key: int) -> None:
    """Release the lock :func:`acquire_advisory_lock` took; a lost connection took it along."""
    try:
        connection.rollback()
        with _autocommit(connection):
            connection.execute(select(func.pg_advisory_unlock(key)))
    except SQLAlchemyError:  # the connection is gone, and with it the session lock
        log.debug("advisory unlock skipped: connection closed", exc_info=True)


_NUMBERING_TOPOLOGY = Topology(
    Product("unknown", "an unconfigured product"), Environment.DEV, "", DEFAULT_SCHEMA, False
)
"""Stands in when `alembic revision` numbers a file without DB_* settings: nothing is rendered."""


class _Run:
    """One invocation of env.py: the options, the lock, and the per-revision bookkeeping."""

    def __init__(
        self,
        env: EnvironmentContext,
        settings: DatabaseSettings | None,
        timeouts: dict[str, str | None],
    ) -> None:
        check_alembic_version()
        self.env = env
        attributes = env.config.attributes
        given = attributes.get(SETTINGS_KEY)
        self.settings = settings or (given if isinstance(given, DatabaseSettings) else None)
        if self.settings is None:
            try:
                self.settings = DatabaseSettings()
            except ConfigurationError:
                if not self._numbering_only():
                    raise
        self.topology = self.settings.topology if self.settings is not None else _NUMBERING_TOPOLOGY
        mismatch = None if self.settings is None else product_mismatch(env.config, self.topology)
        if mismatch is not None:
            raise MigrationError(mismatch)
        attributes[TOPOLOGY_KEY] = self.topology
        self.schema = self.topology.schema
        self.timeouts = timeouts
        self.bookkeeping = bool(attributes.get(BOOKKEEPING_KEY, True))
        self.applied: list[str] = attributes.setdefault(APPLIED_KEY, [])
        self.uncommitted: list[str] = []
        """Steps recorded in the transaction still open; ``applied`` once it committed."""
        self.ledger = ledger_table(self.schema)
        self.ledger_ready = False
        self.fresh_record = True
        """Whether the ledger or the version table is (about to be) created by this run."""
        self.started: dict[str, float] = {}
        self.pending: _LedgerRow | None = None
        """The running revision's ledger row, until it rides on the version-table statement."""
        self.checksums: dict[str, str] = {}
        """Checksums the history check computed, reused for the ledger rows."""
        self.written: set[str] = set()
        """Revisions of the current step whose ledger row rode on the version-table statement."""
        self.session: dict[str, str | None] | None = None
        """The timeouts the env last set on the connection (a value ``None``: the server's);
        ``None`` when unknown: the next revision sets them."""
        self.said: tuple[str, ...] = ()
        """The same, as the server states them: what the version move's read-back must match."""
        self.client = client_name()
        problems = revision_tree_problems(env.script)
        if problems:
            raise MigrationError("; ".join(problems))
        install_logical_area_hook(env.script, self.topology)

    def run(self, metadata: MetaData | Sequence[MetaData] | None) -> None:
        if self._without_database():
            offline_scope = AutogenerateScope(self.schema, self._owned())
            self._configure(metadata, lambda: offline_scope, offline=True)
            # `--sql` output a DBA pipes into psql does what the online run does around the
            # revisions: the schema, the search_path the login would have, the advisory lock.
            standalone = (
                self.env.is_offline_mode() and self.bookkeeping and not self._numbering_only()
            )
            key = advisory_lock_key(self.topology)
            if standalone:
                self._static(
                    create_schema_statement(self.schema) + ";",
                    f"SET search_path = {', '.join(map(quote, self.topology.search_path))};",
                    _offline_lock_wait(key) + ";",
                )
            with self.env.begin_transaction():
                self.env.run_migrations()
            self._committed()
            if standalone:
                self._static(f"SELECT pg_advisory_unlock({key});")
            return
        self._run_online(metadata)

    def _static(self, *statements: str) -> None:
        impl = self.env.get_context().impl
        for statement in statements:
            impl.static_output(statement + "\n")

    def _without_database(self) -> bool:
        return self.env.is_offline_mode() or self._numbering_only()

    def _numbering_only(self) -> bool:
        # `alembic revision` without --autogenerate runs env.py only to number the file:
        # it must work on a laptop with no database and no DB_* settings.
        revision_context = self.env.context_opts.get("revision_context")
        return revision_context is not None and not revision_context.command_args.get(
            "autogenerate"
        )

    def _owned(self) -> frozenset[str]:
        return frozenset(self.topology.owned_schemas)

    def _configure(
        self,
        metadata: Any,
        scope: Callable[[], AutogenerateScope],
        *,
        offline: bool,
        **kw: Any,
    ) -> None:
        options: dict[str, Any] = {
            "target_metadata": physical_metadata(metadata, self.topology),
            "version_table_schema": self.schema,
            "include_schemas": True,
            "include_name": lambda *args: scope().include_name(*args),
            "include_object": lambda *args: scope().include_object(*args),
            "transaction_per_migration": True,
            "process_revision_directives": _process_revision_directives,
            "on_version_apply": self._record,
        }
        planned = self.env.context_opts.get("fn")
        if planned is not None:
            options["fn"] = self._wrap_plan(planned)
        if offline:
            options.update(dialect_name="postgresql", literal_binds=True)
            options["dialect_opts"] = {"paramstyle": "named"}
            if not self.env.is_offline_mode():
                options["as_sql"] = True  # numbering a new revision: nothing is rendered
        self.env.configure(**options, **kw)

    def _run_online(self, metadata: Any) -> None:
        assert self.settings is not None
        problem = self.settings.direct_connection_problem(MIGRATIONS)
        if problem is not None:
            raise ConfigurationError(problem)
        engine = migration_engine(self.settings)
        try:
            with engine.connect() as connection:
                key = advisory_lock_key(self.topology)
                try:
                    with _autocommit(connection):
                        self._lock_and_prepare(connection, key)
                    found: list[AutogenerateScope] = []

                    def scope() -> AutogenerateScope:
                        # Asked only by autogenerate / check, so upgrades skip the query.
                        if not found:
                            unmanaged = unmanaged_relations(connection, self._owned())
                            # Alembic skips its version table only when reflected under the
                            # schema it was given; the default schema reflects as None (#569).
                            bookkeeping = {
                                (self.schema, LEDGER_TABLE),
                                (self.schema, "alembic_version"),
                            }
                            found.append(
                                AutogenerateScope(
                                    self.schema,
                                    self._owned(),
                                    unmanaged | bookkeeping,
                                    default_schema_relations(connection, self.schema),
                                )
                            )
                        return found[0]

                    self._configure(metadata, scope, offline=False, connection=connection)
                    with self.env.begin_transaction():
                        self.env.run_migrations()
                    self._committed()
                finally:
                    release_advisory_lock(connection, key)
        finally:
            engine.dispose()

    def _lock_and_prepare(self, connection: Connection, key: int) -> None:
        """Take the advisory lock, create a missing schema (not for ``current``), find the ledger.

        Runs in autocommit (see :func:`_autocommit`): uncontended, the lock and both lookups are
        one round trip. After a wait they are looked up again, in a statement of their own: the
        run that held the lock may have created the schema or the ledger meanwhile.
        """
        schema = quote(self.schema)
        version = str(self.env.context_opts.get("version_table") or "alembic_version")
        names = {
            "schema": schema,
            "ledger": f"{schema}.{quote(LEDGER_TABLE)}",
            "version": f"{schema}.{quote(version)}",
        }
        lookups = (
            "to_regnamespace(:schema) IS NOT NULL, to_regclass(:ledger) IS NOT NULL, "
            "to_regclass(:version) IS NOT NULL"
        )
        locked, has_schema, self.ledger_ready, has_version = connection.execute(
            text(f"SELECT pg_try_advisory_lock(:key), {lookups}"), {"key": key, **names}
        ).one()
        if not locked:
            log.info(
                "Waiting for another migration run on %s schema %s to finish",
                self.topology.database,
                self.schema,
            )
            acquire_advisory_lock(connection, key)
            has_schema, self.ledger_ready, has_version = connection.execute(
                text(f"SELECT {lookups}"), names
            ).one()
        self.fresh_record = not (self.ledger_ready and has_version)
        if not has_schema and self._may_write():
            log.info("Creating schema %s", self.schema)
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {names['schema']}"))

    def _may_write(self) -> bool:
        """Whether Alembic may create its version table in this command: all but ``current``.

        ``alembic current`` is the one command Alembic runs with ``dont_mutate``; it must work
        with a read-only login on a fresh database, so it does not create the schema either.
        """
        return not self.env.context_opts.get("dont_mutate", False)

    def _wrap_plan(self, planned: Callable[..., Iterable[Any]]) -> Callable[..., list[Any]]:
        def plan(heads: Any, migration: MigrationContext) -> list[Any]:
            with warnings.catch_warnings():
                # SQLAlchemy 2.1 reflects a NOT VALID check (the lint asks for them) with a
                # dialect_options key, then warns that no dialect is named "dialect": under
                # -W error that failed autogenerate and `alembic check`. Nothing is lost.
                warnings.filterwarnings(
                    "ignore", "Can't validate argument 'dialect_options'", SAWarning
                )
                try:
                    steps = list(planned(heads, migration))
                except AttributeError as exc:  # a revision module without downgrade()
                    problem = missing_downgrade(self.env.script, exc)
                    if problem is None:
                        raise
                    raise MigrationError(problem) from exc
            revision_steps = [step for step in steps if isinstance(step, RevisionStep)]
            if revision_steps and self.bookkeeping and not migration.as_sql:
                self._verify_history(migration)
            if revision_steps and self.bookkeeping:
                self._attach_ledger_to_version_updates(migration)
            for step in revision_steps:
                step.migration_fn = self._wrap_step(step, migration)
            return steps

        return plan

    def _verify_history(self, migration: MigrationContext) -> None:
        connection = migration.connection
        assert connection is not None
        script = self.env.script
        files = revision_files(script)
        rows = read_ledger(connection, self.schema, exists=self.ledger_ready)
        self.checksums = {file.revision: file.checksum for file in files}
        findings = [
            finding
            for finding in history_findings(files, rows, ())
            if finding.rule in {"edited", "missing"}
        ]
        if findings:
            raise MigrationError("; ".join(finding.line() for finding in findings))

    def _attach_ledger_to_version_updates(self, migration: MigrationContext) -> None:
        """Send each revision's ledger row in the statement that moves the version table.

        Alembic updates ``alembic_version`` once per revision; prefixing that statement with
        ``WITH sigma_db_ledger AS (INSERT INTO migration_runs ...)`` writes the row in the same
        transaction without a round trip of its own. Online the INSERT is compiled once per run
        (compiling it per revision cost about as much as the round trip it saves) and the row's
        values are quoted into it by psycopg; offline the same statement renders with literals.
        Anything unusual (a version statement with parameters or a ``%``, Alembic no longer going
        through ``impl._exec``) falls back to SQLAlchemy's CTE or to :meth:`_record`'s INSERT.
        """
        impl = migration.impl
        send = impl._exec
        dialect = migration.dialect
        placeholders: dict[str, Any] = {name: bindparam(f"sigma_{name}") for name in _LEDGER_VALUES}
        ledger_sql = self._ledger_insert(placeholders).compile(dialect=dialect)
        prefix = f"WITH sigma_db_ledger AS ({ledger_sql}) "

        def exec_with_ledger(construct: Any, *args: Any, **kw: Any) -> Any:
            row = self.pending
            if row is None or args or kw or not _moves_version_table(construct, migration):
                return send(construct, *args, **kw)
            self.pending = None
            self.written.add(row.script.revision)
            values = self._ledger_values(row, migration)
            if migration.as_sql:
                literal = {"literal_binds": True}
                ledger = self._ledger_insert(values).compile(
                    dialect=dialect, compile_kwargs=literal
                )
                moved = construct.compile(dialect=dialect, compile_kwargs=literal)
                sql = f"WITH sigma_db_ledger AS ({ledger}) {moved}".replace("\t", "    ").strip()
                impl.static_output(sql + impl.command_terminator)
                return None
            compiled = construct.compile(dialect=dialect)
            connection = migration.connection
            if connection is None or not _sendable_as_text(compiled):
                cte = self._ledger_insert(values).cte("sigma_db_ledger")
                self.session = None  # not read back: state the timeouts again
                return send(construct.add_cte(cte))
            # Values quoted by psycopg (sql.Literal), and the statement sent without parameters,
            # so psycopg does not parse it for placeholders: it differs per revision, so that
            # parse would never be cached, and it cost more than the values' quoting.
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            literals = {
                f"sigma_{name}": psycopg.sql.Literal(value).as_string(driver)
                for name, value in values.items()
            }
            # The revision's own SQL may have changed the timeouts (a SET, a function calling
            # set_config, a raw cursor): the statement returns what the session has, so the next
            # revision states them again only if they differ, without a round trip of its own.
            # Sent on the driver's cursor: SQLAlchemy's result for the returned row cost more
            # than the rest of the bookkeeping.
            moved = str(compiled)
            moved += (", " if " RETURNING " in moved else " RETURNING ") + _SESSION_TIMEOUTS
            statement = (prefix % literals) + moved
            try:
                rowcount, found = _on_driver(connection, statement)
            except DBAPIError as exc:  # e.g. a trigger or a privilege on the ledger
                raise MigrationError(_failure(row.script, exc, self.settings)) from exc
            if found is None or tuple(found[-len(_TIMEOUTS) :]) != self.said:
                self.session = None
            return _VersionMove(rowcount)

        setattr(impl, "_exec", exec_with_ledger)  # noqa: B010 - mypy: assigning to a method

    def _ledger_values(self, row: _LedgerRow, migration: MigrationContext) -> dict[str, Any]:
        script = row.script
        duration = None
        started = self.started.get(script.revision)
        if started is not None and not migration.as_sql:
            duration = round((time.perf_counter() - started) * 1000)
        phase = revision_phase(script.module)
        return {
            "revision": script.revision,
            "operation": row.operation,
            "description": (script.doc or "").strip() or None,
            "phase": None if phase is None else phase.value,
            "checksum": self.checksums.get(script.revision) or file_checksum(script.path),
            "client": self.client,
            "duration_ms": duration,
            "success": True,
        }

    def _ledger_insert(self, values: dict[str, Any]) -> Insert:
        # inline(): nothing to read back, so no RETURNING (a CTE's would be discarded anyway).
        return self.ledger.insert().inline().values(**values, applied_by=APPLIED_BY)

    def _wrap_step(self, step: RevisionStep, migration: MigrationContext) -> Callable[..., None]:
        script, migrate = step.revision, step.migration_fn
        operation: Operation = "upgrade" if step.is_upgrade else "downgrade"

        @functools.wraps(migrate)
        def run_revision(**kw: Any) -> None:
            self._committed()  # the previous revision's transaction ended before this one began
            self.pending = None
            self._ensure_ledger(migration)
            if migration.as_sql:
                migration.impl.static_output(f"{REVISION_MARK}{script.revision}")
            wanted = {
                name: timeout_setting(script.module, name, self.timeouts[name])
                for name in _TIMEOUTS
            }
            # Online the session keeps its settings across revisions: they are sent only when
            # they change (one round trip saved per revision). Offline every revision states
            # its own. None is the server's value: RESET undoes an earlier SET.
            if migration.as_sql:
                migration.execute(
                    text(
                        "; ".join(
                            f"RESET {name}" if value is None else f"SET {name} = '{value}'"
                            for name, value in wanted.items()
                        )
                    )
                )
            elif self.session != wanted:
                try:
                    self.said = self._set_timeouts(migration, wanted)
                except DBAPIError as exc:  # a value the server refuses (lock_timeout = "99999999d")
                    raise MigrationError(_failure(script, exc, self.settings)) from exc
            self.session = wanted
            offline = migration.as_sql and self.bookkeeping
            check = _expected_version_check(migration, step) if offline else ""
            migration.opts[VERSION_CHECK_KEY] = check
            if check:
                migration.impl.static_output(
                    version_check_block(check) + migration.impl.command_terminator
                )
            self.started[script.revision] = time.perf_counter()
            if self.bookkeeping:
                self.pending = _LedgerRow(script, operation)
            try:
                migrate(**kw)
            except MigrationError:
                raise
            except Exception as exc:
                if migration.as_sql:  # no database: the revision's own code failed to render
                    what = f"{type(exc).__name__}: {' '.join(str(exc).split()).rstrip('.')}"
                    raise MigrationError(
                        f"revision {script.revision} ({Path(script.path).name}): rendering its "
                        f"SQL offline failed ({what}); fix the revision (code that reads data "
                        "must check context.is_offline_mode())"
                    ) from exc
                raise MigrationError(_failure(script, exc, self.settings)) from exc

        return run_revision

    @staticmethod
    def _set_timeouts(
        migration: MigrationContext, wanted: Mapping[str, str | None]
    ) -> tuple[str, ...]:
        """Set the timeouts; return them as the server states them (``1000ms`` reads ``1s``).

        ``set_config`` rather than ``SET``: its answer is what the version move's read-back
        is compared with (see ``_attach_ledger_to_version_updates``). None is the session's
        default, which ``RESET`` would restore.
        """
        values = ", ".join(
            f"set_config('{name}', (SELECT reset_val FROM pg_catalog.pg_settings "  # noqa: S608
            f"WHERE name = '{name}'), false)"
            if value is None
            else f"set_config('{name}', '{value}', false)"
            for name, value in wanted.items()
        )
        assert migration.connection is not None
        row = migration.connection.exec_driver_sql(f"SELECT {values}").one()
        return tuple(str(value) for value in row)

    def _committed(self) -> None:
        self.applied.extend(self.uncommitted)
        self.uncommitted.clear()

    def _ensure_ledger(self, migration: MigrationContext) -> None:
        # Also reached without any revision running (`alembic stamp`): create it here too.
        if not self.bookkeeping:
            return
        if not self.ledger_ready:
            migration.execute(CreateTable(self.ledger, if_not_exists=True))
            self.ledger_ready = True
        if self.fresh_record:  # the ledger or the version table was made in this run
            _make_bookkeeping_read_only(migration, self.schema)
            self.fresh_record = False

    @staticmethod
    def _recorded_revisions(step: MigrationInfo) -> list[str]:
        """The revisions a step applies or reverts, in the order it does so.

        A revision step is one revision; a stamp moves the version table over every revision
        between its old and new heads (``stamp head`` after ``upgrade 0001``: 0002, 0003, ...),
        and each of them gets its ledger row, else the dry run would call them "unknown".
        """
        if not step.is_stamp:
            return list(step.up_revision_ids)
        revisions = [
            rev.revision
            for rev in step.revision_map.iterate_revisions(
                step.up_revision_ids, step.down_revision_ids or "base"
            )
            if rev is not None and rev.revision not in step.down_revision_ids
        ]
        return revisions if not step.is_upgrade else list(reversed(revisions))

    def _record(self, *, ctx: MigrationContext, step: MigrationInfo, **_: Any) -> None:
        if not step.is_stamp:
            skipped = [rev for rev in step.up_revision_ids if rev not in self.started]
            if skipped:
                # Raised inside the revision's transaction: nothing of it is committed.
                raise unsupported_alembic(
                    f"revision {', '.join(skipped)} ran without sigma_db's per-revision "
                    "wrapper (no timeouts, no ledger checks)"
                )
        if not self.bookkeeping:
            self.started.clear()
            return
        operation: Operation
        if step.is_stamp:
            operation = "stamp" if step.is_upgrade else "downgrade"
        else:
            operation = "upgrade" if step.is_upgrade else "downgrade"
        written, self.written, self.pending = self.written, set(), None
        self._ensure_ledger(ctx)
        if step.is_stamp and ctx.as_sql:  # the ledger rows only if the stamp moved the table
            ctx.impl.static_output(
                version_check_block(_expected_version_check(ctx, step))
                + ctx.impl.command_terminator
            )
        for revision in self._recorded_revisions(step):
            script = step.revision_map.get_revision(revision)
            assert isinstance(script, Script)
            if revision not in written:
                self.session = None  # the timeouts were not read back with the version move
                ctx.execute(
                    self._ledger_insert(self._ledger_values(_LedgerRow(script, operation), ctx))
                )
            self.started.pop(revision, None)
            self.uncommitted.append(f"{operation} {revision}")
        if step.is_stamp and ctx.opts.get("purge") and not ctx.as_sql:
            self._record_purged(ctx, step)

    def _record_purged(self, ctx: MigrationContext, step: MigrationInfo) -> None:
        """``stamp --purge``: revisions the ledger has applied beyond the new heads are not.

        Alembic empties the version table and stamps the new heads from base; without these
        rows the ledger would still call the revisions above them applied.
        """
        assert ctx.connection is not None
        kept = {
            rev.revision
            for rev in step.revision_map.iterate_revisions(step.up_revision_ids, "base")
            if rev is not None
        }
        applied = applied_revisions(read_ledger(ctx.connection, self.schema, exists=True))
        for revision in sorted(set(applied) - kept, reverse=True):
            script = _script_of(step, revision)
            if script is None:
                continue  # no file: the dry run reports it as missing
            row = _LedgerRow(script, "downgrade")
            ctx.execute(self._ledger_insert(self._ledger_values(row, ctx)))
            self.uncommitted.append(f"downgrade {revision}")


@dataclass(frozen=True)
class _VersionMove:
    """What Alembic reads from the statement that moves the version table: its rowcount."""

    rowcount: int


@dataclass(frozen=True)
class _LedgerRow:
    """What the ledger row of the running revision says, before its duration is known."""

    script: Script
    operation: Operation


def bookkeeping_revokes(schema: str, version_table: str = "alembic_version") -> str:
    """A query for the ``REVOKE``s that leave the migrations' record to its owner alone.

    The record is the version table, the ledger and the ledger's identity sequence in
    ``schema``. The migrator's default privileges give ``_rw`` INSERT, UPDATE and DELETE on
    every table it creates and USAGE and UPDATE on every sequence, these included: the
    application's login could rewrite the migration history the CI gate trusts, or ``setval``
    the sequence so that every later ledger insert fails. Each row is one statement, its names
    quoted by the server. Asked when the record was just created; ``sigma-db roles apply``
    keeps it so.
    """
    names = (version_table, LEDGER_TABLE, f"{LEDGER_TABLE}_id_seq")
    relations = ", ".join(f"to_regclass('{quote(schema)}.{quote(name)}')" for name in names)
    return (
        "SELECT DISTINCT 'REVOKE ' || CASE WHEN c.relkind = 'S' THEN 'USAGE, UPDATE ON SEQUENCE ' "  # noqa: S608
        "ELSE 'INSERT, UPDATE, DELETE, TRUNCATE ON TABLE ' END || c.oid::regclass::text || "
        "' FROM ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE "
        "quote_ident(pg_get_userbyid(a.grantee)) END AS revoke FROM pg_catalog.pg_class AS c "
        f"CROSS JOIN LATERAL aclexplode(c.relacl) AS a WHERE c.oid IN ({relations}) AND "
        "a.grantee <> c.relowner AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', "
        "'TRUNCATE', 'USAGE')"
    )


def revoke_bookkeeping_writes(connection: Connection, query: str) -> None:
    """Run the ``REVOKE``s :func:`bookkeeping_revokes` finds, in the caller's transaction.

    A query, not a ``DO`` block: the first PL/pgSQL a connection runs loads the language
    (several ms, a tenth of a 50-revision upgrade), and a fresh record has no writers.
    """
    for (revoke,) in connection.exec_driver_sql(query).fetchall():
        connection.exec_driver_sql(revoke, execution_options={"no_parameters": True})


def _on_driver(connection: Connection, statement: str) -> tuple[int, Any]:
    """Send ``statement`` (no parameters) on the driver's own cursor: its rowcount, first row.

    Cheaper than SQLAlchemy's result for the row the version move returns. Failures come out
    as SQLAlchemy's would: wrapped in ``DBAPIError``, and a lost connection invalidated, so
    the transaction's rollback that follows does not fail on it and hide the revision's error.
    """
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    logger = connection.engine.logger  # where SQLAlchemy logs what it sends (echo, INFO)
    if logger.isEnabledFor(logging.INFO):
        logger.info(statement)
    try:
        with driver.cursor() as cursor:
            cursor.execute(statement)  # no parameters: sent as it is
            return cursor.rowcount, cursor.fetchone()
    except psycopg.Error as exc:
        lost = driver.broken or driver.closed
        wrapped = DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=lost
        )
        if lost:
            connection.invalidate(wrapped)
        raise wrapped from exc


def _make_bookkeeping_read_only(migration: MigrationContext, schema: str) -> None:
    query = bookkeeping_revokes(schema, migration.version_table)
    if migration.as_sql:
        migration.execute(
            text(
                f"DO $sigma_db$ DECLARE r record; BEGIN FOR r IN {query} LOOP EXECUTE r.revoke; "
                "END LOOP; END $sigma_db$"
            )
        )
        return
    assert migration.connection is not None
    revoke_bookkeeping_writes(migration.connection, query)


def _offline_lock_wait(key: int) -> str:
    """Offline: take the runners' advisory lock the way :func:`acquire_advisory_lock` does.

    A blocking ``SELECT pg_advisory_lock`` holds its snapshot while it waits, and an online
    runner's ``CREATE INDEX CONCURRENTLY`` waits for every older snapshot: the two deadlock. The
    loop commits between tries (PostgreSQL 14+ lets go of the snapshot there), so it holds none
    for longer than one try and a short sleep.
    """
    return (
        f"DO $sigma_db$ BEGIN WHILE NOT pg_try_advisory_lock({key}) LOOP COMMIT; "
        "PERFORM pg_sleep(0.05); END LOOP; END $sigma_db$"
    )


def _expected_version_check(migration: MigrationContext, step: RevisionStep | MigrationInfo) -> str:
    """Offline: PL/pgSQL failing the revision unless the version table is where expected.

    That is the revision before it for an upgrade, the revision itself for a downgrade. Online,
    Alembic checks the version table's rowcount. A script piped into psql has no such check:
    run beside an online runner (which applied the revision meanwhile), or on after a failed
    revision without ``ON_ERROR_STOP``, it would apply revisions a second time or out of order.
    It opens the revision's transaction, so a failed check leaves nothing behind, and the
    helpers repeat it where they leave the transaction (:data:`~.ops.VERSION_CHECK_KEY`).
    """
    if isinstance(step, RevisionStep):
        expected = ",".join(sorted(step.from_revisions)) or None
        doing = f"revision {step.revision.revision}"
    else:  # a stamp, checked after it moved the version table: its new place
        after = step.up_revision_ids if step.is_upgrade else step.down_revision_ids
        expected = ",".join(sorted(after)) or None
        doing = f"stamp to {expected or 'base'} (after moving the version table)"
    table = (
        f"{quote(migration.version_table_schema)}.{quote(migration.version_table)}"
        if migration.version_table_schema
        else quote(migration.version_table)
    )
    # RAISE's format: the found version goes in at the one %, the rest is literal.
    said = [
        part.replace("'", "''").replace("%", "%%")
        for part in (
            f"{doing} expects the database at "
            f"{expected or 'no revision'}, but its version table says ",
            "; it was migrated meanwhile, or an earlier revision of this script failed: run the "
            "dry run, render the script again from the database's revision, and run that",
        )
    ]
    message = "%".join(said)
    found = "SELECT string_agg(version_num, ',' ORDER BY version_num) INTO sigma_db_found"
    return (
        f"IF to_regclass('{table}') IS NOT NULL THEN {found} FROM {table}; END IF; "
        f"IF sigma_db_found IS DISTINCT FROM {_sql_literal(expected)} THEN RAISE EXCEPTION "
        f"'{message}', coalesce(sigma_db_found, 'no revision'); END IF;"
    )


def _sql_literal(value: str | None) -> str:
    return "NULL" if value is None else sql_literal(value)


def _script_of(step: MigrationInfo, revision: str) -> Script | None:
    try:
        script = step.revision_map.get_revision(revision)
    except RevisionError:  # no file declares it
        return None
    return script if isinstance(script, Script) else None


def _moves_version_table(construct: Any, migration: MigrationContext) -> bool:
    table = getattr(construct, "table", None)
    return (
        isinstance(construct, UpdateBase)
        and table is not None
        and getattr(table, "name", None) == migration.version_table
        and getattr(table, "schema", None) == migration.version_table_schema
    )


def _sendable_as_text(compiled: Any) -> bool:
    """Whether Alembic's compiled statement can be sent as it is, without parameters.

    It has none today (``literal_column`` values). A ``%`` would have been doubled for
    psycopg's paramstyle and would reach the server doubled.
    """
    return not compiled.params and "%" not in str(compiled)


def _process_revision_directives(
    context: MigrationContext, revision: Any, directives: list[MigrationScript]
) -> None:
    number_revisions(context, revision, directives)
    drop_sdk_info(directives)


@contextmanager
def _autocommit(connection: Connection) -> Iterator[None]:
    """Run the block's statements in autocommit: one round trip each, no BEGIN or COMMIT.

    For the lock's bookkeeping around the revisions (their own transactions are untouched):
    it saves four round trips per run, and a statement in autocommit never holds a snapshot
    after it returns, which the lock wait relies on (see :func:`acquire_advisory_lock`).
    """
    default = connection.default_isolation_level
    connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield
    finally:
        # A lost connection keeps its own error: committing or resetting it would replace
        # that with SQLAlchemy's "invalid transaction"; the pool discards it anyway.
        if not connection.invalidated:
            connection.commit()  # ends SQLAlchemy's own transaction; nothing is sent
            connection.execution_options(isolation_level=default)


def _failure(script: Script, exc: Exception, settings: DatabaseSettings | None = None) -> str:
    remedy = "Fix the revision (or the data) and run the migration again."
    effects = ""
    if isinstance(exc, OutsideTransactionFailure):  # batches committed, an index dropped
        effects = f"; {exc.effects}"
        exc = exc.cause
    if isinstance(exc, DBAPIError):
        reason = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
        # psycopg's %(name)s placeholders shown the way the revision wrote them: :name
        statement = re.sub(r"%\((\w+)\)s", r":\1", " ".join(str(exc.statement or "").split()))
        if len(statement) > 200:
            statement = statement[:199] + "…"
        what = f"{reason}; statement: {statement}"
        if isinstance(exc.params, Mapping) and "batch_size" in exc.params:
            # run_in_batches' own parameter; other values may be data, or secrets: not shown
            what += f" (with batch_size={exc.params['batch_size']!r})"
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        if exc.connection_invalidated or sqlstate.startswith(("08", "57P")):
            remedy = (
                "The connection to the server was lost (a restart, a failover, or "
                "pg_terminate_backend): run the migration again."
            )
        elif settings is not None and sqlstate == "42501":
            # insufficient_privilege, e.g. "must be owner of table": the login, not the revision
            from sigma_db.roles import RoleKind, group_role

            migrator = group_role(settings.topology.product, RoleKind.MIGRATOR)
            remedy = (
                f"DB_USER ({settings.user}) lacks a privilege the revision needs: run migrations "
                f"as a member of {migrator}, the role that owns the product's objects; if it is "
                "one, the revision needs more than that role may do (an extension, a setting "
                "for superusers): have a DBA run that part."
            )
    else:
        what = f"{type(exc).__name__}: {' '.join(str(exc).split()).rstrip('.')}"
    return (
        f"revision {script.revision} ({Path(script.path).name}) failed: {what}; its "
        f"transaction was rolled back: the version table and the ledger are unchanged"
        f"{effects}. {remedy}"
    )
