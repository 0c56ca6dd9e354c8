"""``db-migrate-dry``: all a migration would do and all that is wrong with it, writing nothing.

Offline checks always run: the revision tree, the lock file, each revision's SQL rendered in
``--sql`` mode (as it would run on the target), and its lint. When the database answers, the dry
run also reads (in a read-only session) the version table and the ledger: what is pending, and
whether an applied revision was edited, deleted or applied outside sigma-db. When it does not
answer, the report says so and renders every revision, as for a fresh database.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from sigma_db.errors import DatabaseUnavailableError, SigmaDBError
from sigma_db.migrations.environment import (
    BOOKKEEPING_KEY,
    MIGRATIONS,
    REVISION_MARK,
    SETTINGS_KEY,
    check_alembic_version,
    database_failure,
    migration_engine,
    unsupported_alembic,
)
from sigma_db.migrations.errors import MigrationError
from sigma_db.migrations.findings import Finding
from sigma_db.migrations.layout import product_mismatch
from sigma_db.migrations.ledger import LedgerRow, history_findings, read_ledger
from sigma_db.migrations.lockfile import LOCK_FILE_NAME, lock_findings, read_lock
from sigma_db.migrations.revisions import (
    RevisionFile,
    check_target,
    revision_files,
    revision_tree_problems,
    script_directory,
)
from sigma_db.settings import DatabaseSettings

__all__ = ["DatabaseState", "DryRunReport", "dry_run", "render_sql"]


@dataclass(frozen=True)
class DatabaseState:
    """What the database says, or why it could not be asked."""

    reachable: bool
    heads: tuple[str, ...] = ()
    ledger: tuple[LedgerRow, ...] = ()
    reason: str = ""
    asked: bool = True
    """``False`` when the dry run stopped before asking (``reason`` says why)."""


@dataclass
class DryRunReport:
    """The dry run's answer; :attr:`findings` empty means the gate passes."""

    target: str
    database: DatabaseState
    revisions: list[RevisionFile] = field(default_factory=list)
    pending: list[object] = field(default_factory=list)
    """:class:`~sigma_db.migrations.lint.RenderedRevision` per pending revision, oldest first."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.findings


def dry_run(
    config: Config,
    settings: DatabaseSettings,
    *,
    lint: bool = True,
    require_database: bool = False,
    target: str = "head",
) -> DryRunReport:
    """Check and render what ``sigma-db migrate`` would do; never writes anything anywhere.

    A database that cannot be reached over the network (refused, timeout, unknown host) only
    limits the report to offline checks, unless ``require_database`` (the CI gate), which makes
    it a finding. A login or permission failure always raises :class:`MigrationError`.
    ``target`` is what ``sigma-db migrate --to`` would upgrade to.
    """
    topology = settings.topology
    upto = "" if target == "head" else f", up to {target}"
    report = DryRunReport(
        target=f"{settings.display_dsn} schema {topology.schema}{upto}",
        database=DatabaseState(False, asked=False, reason="the revision files have problems"),
    )
    check_alembic_version()
    script = script_directory(config)  # a malformed alembic.ini is one line from here
    mismatch = product_mismatch(config, topology)
    if mismatch is not None:  # every other check would be about the wrong product's schema
        report.findings.append(Finding("product", mismatch))
        report.database = DatabaseState(False, asked=False, reason="DB_* name another product")
        return report
    pooled = settings.direct_connection_problem(MIGRATIONS)
    if pooled is not None:
        report.findings.append(Finding("pooler", pooled))
    problems = revision_tree_problems(script)
    if problems:
        report.findings.extend(Finding("revision-tree", problem) for problem in problems)
        return report
    files = revision_files(script)
    report.revisions = files
    relative = re.fullmatch(r"\+(\d+)", target.strip())
    steps = int(relative.group(1)) if relative else None  # "+2": after the database's revision
    goal = None if steps is not None else _resolve(script, target)
    lock_path = _lock_path(script)
    try:
        report.findings.extend(lock_findings(files, read_lock(lock_path), lock_path))
    except MigrationError as exc:
        report.findings.append(Finding("lock-corrupt", str(exc)))

    state = read_database(settings)
    report.database = state
    if require_database and not state.reachable:
        report.findings.append(
            Finding(
                "database-unreachable",
                f"{state.reason} (--require-database: the gate needs the database to compare "
                "its history)",
            )
        )
    start: str | None = None
    if state.reachable:
        unknown = [head for head in state.heads if not _known(script, head)]
        lineage: list[str] = []
        for head in state.heads:
            if head not in unknown:
                lineage.extend(rev.revision for rev in script.iterate_revisions(head, "base"))
        report.findings.extend(
            history_findings(files, state.ledger, lineage, unknown_heads=unknown)
        )
        if unknown:
            return report
        start = state.heads[0] if state.heads else None
    if steps is not None:
        goal = _steps_after(script, start, steps, target)
    if goal is None or goal == start or (start is not None and goal in _ancestors(script, start)):
        return report
    sql = render_sql(config, settings, start, goal)
    if lint:
        from sigma_db.migrations.lint import lint_revisions, split_rendered

        rendered = split_rendered(sql, {f.revision: f for f in files})
        expected = _pending_count(script, start, goal)
        if len(rendered) != expected:
            raise unsupported_alembic(
                f"rendering {expected} pending revision(s) offline produced "
                f"{len(rendered)} marked chunk(s), so the dry run cannot see what would run"
            )
        report.pending = list(rendered)
        report.findings.extend(lint_revisions(rendered))
    return report


def render_sql(
    config: Config, settings: DatabaseSettings, start: str | None, target: str = "head"
) -> str:
    """The offline SQL of every revision after ``start`` (``None``: from an empty database)."""
    buffer = io.StringIO()
    rendering = Config(
        config.config_file_name,
        ini_section=config.config_ini_section,
        output_buffer=buffer,
        attributes={**config.attributes, SETTINGS_KEY: settings, BOOKKEEPING_KEY: False},
    )
    target = target if start is None else f"{start}:{target}"
    try:
        command.upgrade(rendering, target, sql=True)
    except SigmaDBError:
        raise
    except Exception as exc:  # a revision's own code failed while rendering: say which one
        output = buffer.getvalue()
        where = output.rfind(REVISION_MARK)
        revision = output[where + len(REVISION_MARK) :].split()[0] if where >= 0 else "?"
        raise MigrationError(
            f"revision {revision}: rendering its SQL offline failed ({type(exc).__name__}: "
            f"{exc}); code that reads data must check context.is_offline_mode()"
        ) from exc
    return buffer.getvalue()


def read_database(settings: DatabaseSettings) -> DatabaseState:
    """Version heads and ledger rows, read in a read-only session; unreachable is an answer."""
    schema = settings.topology.schema
    engine = migration_engine(settings)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SET default_transaction_read_only = on")
            connection.commit()
            migration = MigrationContext.configure(
                connection, opts={"version_table_schema": schema}
            )
            heads = tuple(migration.get_current_heads())
            ledger = tuple(read_ledger(connection, schema))
            connection.rollback()
    except DatabaseUnavailableError as exc:
        if not _network_failure(exc):
            # Wrong password, unknown role or database, SSL refused: the gate must not pass.
            raise MigrationError(str(exc)) from exc
        return DatabaseState(False, reason=str(exc))
    except SQLAlchemyError as exc:
        raise MigrationError(
            database_failure(settings, exc, "read the migration history of")
        ) from exc
    finally:
        engine.dispose()
    return DatabaseState(True, heads, ledger)


_NETWORK_FAILURES = (
    "connection refused",
    "timeout expired",
    "timed out",
    "could not translate host name",
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "the database system is starting up",
    "the database system is shutting down",
)


def _network_failure(exc: DatabaseUnavailableError) -> bool:
    """Whether the server could not be reached at all (as opposed to refusing the login)."""
    causes: list[str] = []
    cause: BaseException | None = exc
    while cause is not None:
        causes.append(str(cause).lower())
        cause = cause.__cause__
    text = " ".join(causes)
    return any(marker in text for marker in _NETWORK_FAILURES)


def _pending_count(script: ScriptDirectory, start: str | None, goal: str) -> int:
    return sum(1 for _ in script.iterate_revisions(goal, start or "base"))


def _ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    return {rev.revision for rev in script.iterate_revisions(revision, "base")}


def _resolve(script: ScriptDirectory, target: str) -> str | None:
    """The revision id ``--to`` names (``None`` for base), or a one-line error."""
    check_target(target)
    try:
        found = script.get_revision(target)
    except CommandError as exc:
        raise MigrationError(f"--to {target}: {exc}; name a revision number or head") from exc
    return None if found is None else found.revision


def _steps_after(script: ScriptDirectory, start: str | None, steps: int, target: str) -> str:
    """The revision ``steps`` after ``start`` (after an empty database without one)."""
    chain = [rev.revision for rev in reversed(list(script.iterate_revisions("heads", "base")))]
    position = chain.index(start) + 1 if start is not None else 0
    if steps < 1 or position + steps > len(chain):
        raise MigrationError(
            f"--to {target}: {len(chain) - position} revision(s) are pending; name a revision "
            "number, head, or +N within that"
        )
    return chain[position + steps - 1]


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def _lock_path(script: ScriptDirectory) -> Path:
    return Path(script.dir) / LOCK_FILE_NAME
