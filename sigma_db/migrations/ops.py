"""Helpers for revision files: the safe way to do what plain Alembic ops make easy to do unsafely.

* :func:`area` — the physical schema of a logical area (``audit`` → ``lab_audit`` in the
  consolidated dev database), so one revision file migrates both layouts.
* :func:`create_index_concurrently` / :func:`drop_index_concurrently` — outside the revision's
  transaction (``autocommit_block``), idempotent (``IF [NOT] EXISTS``), without the revision's
  timeouts (the build waits for older transactions and may take long, blocking no writes); a
  build that fails drops the invalid index it leaves (a unique one would still reject writes),
  and one left by an earlier failure is dropped first. Give them a revision of their own.
* :func:`run_in_batches` — a backfill that commits every batch, so it holds row locks briefly and
  resumes where it stopped when re-run; offline, a ``DO`` loop that commits likewise.
* :func:`lint_ignore` — accept one lint finding on the next statement, with a reason.

Each checks ``is_offline_mode`` before touching data: in ``--sql`` mode there is no database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from alembic import context, op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import quote
from sigma_db.topology import Topology

__all__ = [
    "OutsideTransactionFailure",
    "area",
    "create_area_schema",
    "create_index_concurrently",
    "create_schema_statement",
    "drop_index_concurrently",
    "lint_ignore",
    "run_in_batches",
]

TOPOLOGY_KEY = "sigma_db.topology"
VERSION_CHECK_KEY = "sigma_db.version_check"
"""``MigrationContext.opts`` key: offline, the running revision's version check (PL/pgSQL).

The environment opens each revision's transaction with it; a helper that leaves the
transaction (``autocommit_block``) repeats it in the next one and before what it runs outside,
so a script psql runs on past a failed check neither backfills again nor records a revision it
did not apply."""
IGNORE_MARK = "-- sigma-db: lint-ignore "

# The DO blocks the helpers render begin with these, so the lint can tell them from a DO block
# a revision writes itself (which it cannot judge): what each does is known.
INDEX_CHECK_START = " BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index "
"""The check after a concurrent build: reads the catalog, changes nothing."""
AREA_SCHEMA_START = " BEGIN IF to_regnamespace("
"""``create_schema_statement``: creates a schema, when missing."""
BATCH_TAG = "$sigma_db_batch$"
"""Quotes the statement a backfill's offline ``DO`` loop runs (the lint judges that one)."""

_INVALID_INDEX = text(
    """
    SELECT NOT i.indisvalid
    FROM pg_catalog.pg_index AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
    WHERE c.relname = :name
      AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class
                            WHERE oid = to_regclass(:table))
    """
)
"""Whether index ``name`` beside ``table`` (as the search_path finds it) is invalid."""


class OutsideTransactionFailure(Exception):
    """A step outside the revision's transaction failed; ``effects`` says what stayed done.

    The environment words the revision's failure with it: the version table and the ledger are
    unchanged as usual, but committed batches stay committed, or an invalid index was dropped.
    """

    def __init__(self, cause: Exception, effects: str) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.effects = effects


def _topology() -> Topology:
    found = context.config.attributes.get(TOPOLOGY_KEY)
    if not isinstance(found, Topology):
        raise ConfigurationError(
            "sigma_db.migrations.ops need the sigma_db environment: migrations/env.py must call "
            "sigma_db.migrations.run_migrations(metadata)."
        )
    return found


def area(logical: str | None = None) -> str:
    """Physical schema for a logical area (``None``: the default schema) in this database."""
    return _topology().physical_schema(logical)


def create_area_schema(logical: str) -> None:
    """Create a logical area's schema (``audit``) under its physical name, unless it exists.

    ``sigma-db roles apply`` creates the areas, owned by the migrator; this is for a database
    set up otherwise.
    """
    op.execute(create_schema_statement(area(logical)))


def create_schema_statement(schema: str) -> str:
    """SQL that creates ``schema`` when it is missing.

    A login without CREATE on the database (the migrator) may run it when the schema exists:
    not so ``CREATE SCHEMA IF NOT EXISTS``, as PostgreSQL checks that privilege before it looks.
    """
    quoted = quote(schema)
    return (
        f"DO $${AREA_SCHEMA_START}{sql_literal(quoted)}) IS NULL THEN CREATE SCHEMA {quoted}; "
        "END IF; END $$"
    )


def create_index_concurrently(
    index_name: str,
    table_name: str,
    columns: Sequence[Any],
    *,
    schema: str | None = None,
    unique: bool = False,
    lock_timeout: str = "0",
    statement_timeout: str = "0",
    **kw: Any,
) -> None:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS``, outside the transaction; retry-safe.

    The build runs with ``lock_timeout`` and ``statement_timeout`` of its own, none by default:
    it waits for every transaction older than it (a 5 s lock timeout fails it whenever a report
    or a backup runs longer) and takes as long as the table needs, while writes go on. A build
    that fails leaves an invalid index, which still rejects writes when unique: it is dropped
    before the error is raised. Offline, a check after the build keeps the version table and the
    ledger from moving past a build that failed.
    """
    migration = op.get_context()
    # Quoted, not validated: a legacy table ("order", "LegacyThing") is Alembic's to name.
    table = f"{_quoted(schema)}.{_quoted(table_name)}" if schema else _quoted(table_name)
    index = f"{_quoted(schema)}.{_quoted(index_name)}" if schema else _quoted(index_name)
    with migration.autocommit_block(), _timeouts(lock_timeout, statement_timeout):
        offline = context.is_offline_mode()
        if not offline and _invalid(index_name, table):
            _drop_concurrently(index_name, table_name, schema)
        try:
            op.create_index(
                index_name,
                table_name,
                list(columns),
                schema=schema,
                unique=unique,
                postgresql_concurrently=True,
                if_not_exists=True,
                **kw,
            )
        except DBAPIError as exc:
            if offline or not _invalid(index_name, table):
                raise
            _drop_concurrently(index_name, table_name, schema)
            raise OutsideTransactionFailure(
                exc, f"the invalid index {index} the failed build left was dropped"
            ) from exc
    _check_version_again()
    # In the revision's transaction again: should the build have failed unnoticed (offline, a
    # script run without ON_ERROR_STOP), the error here keeps its bookkeeping from committing.
    # Online too, so both run the same statements.
    # The index beside its table (not wherever the search_path finds that name first).
    message = (
        f"index {index} is missing or invalid: its concurrent build failed; drop it (DROP INDEX "
        "CONCURRENTLY IF EXISTS ...), fix the cause, run again"
    )
    body = (
        f"{INDEX_CHECK_START}AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid "  # noqa: S608
        f"WHERE c.relname = {sql_literal(index_name)} AND i.indisvalid AND c.relnamespace = "
        "(SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = "
        f"to_regclass({sql_literal(table)}))) THEN "
        f"RAISE EXCEPTION USING MESSAGE = {sql_literal(message)}; END IF; END "
    )
    _session_neutral(f"DO {_dollar_quoted(body)}")


def version_check_block(check: str) -> str:
    """The offline version check (see :data:`VERSION_CHECK_KEY`) as a statement of its own."""
    return f"DO $sigma_db$ DECLARE sigma_db_found text; BEGIN {check} END $sigma_db$"


def _version_check() -> str:
    """Offline, the running revision's version check; empty online and in the dry run."""
    if not context.is_offline_mode():
        return ""
    return str(op.get_context().opts.get(VERSION_CHECK_KEY) or "")


def _check_version_again() -> None:
    """After an ``autocommit_block``: the transaction it began checks the version again."""
    check = _version_check()
    if check:
        op.execute(version_check_block(check))


def _invalid(index_name: str, table: str) -> bool:
    found = op.get_bind().execute(_INVALID_INDEX, {"name": index_name, "table": table})
    return found.scalar() is True


@contextmanager
def _timeouts(lock_timeout: str | None, statement_timeout: str) -> Iterator[None]:
    """The timeouts for the block (``None``: left as is), then the revision's again.

    Kept in session settings, in plain SQL, so the offline script does the same without knowing
    the revision's values.
    """
    saved = ("sigma_db.saved_lock_timeout", "sigma_db.saved_statement_timeout")
    lock = (
        ""
        if lock_timeout is None
        else (f", set_config('lock_timeout', {sql_literal(lock_timeout)}, false)")
    )
    _session_neutral(
        f"SELECT set_config('{saved[0]}', current_setting('lock_timeout'), false), "
        f"set_config('{saved[1]}', current_setting('statement_timeout'), false), "
        f"set_config('statement_timeout', {sql_literal(statement_timeout)}, false){lock}"
    )
    try:
        yield
    finally:
        if context.is_offline_mode() or not op.get_bind().invalidated:
            _session_neutral(
                f"SELECT set_config('lock_timeout', current_setting('{saved[0]}'), false), "
                f"set_config('statement_timeout', current_setting('{saved[1]}'), false)"
            )


def _session_neutral(sql: str) -> None:
    """Run ``sql``, which leaves the session's settings as it found them.

    Online past ``op.execute``, which the environment takes for SQL that may have SET the
    timeouts (it then states them again before the next revision); offline rendered as usual.
    """
    if context.is_offline_mode():
        op.execute(sql)
    else:
        op.get_bind().execute(text(sql))


def _dollar_quoted(body: str) -> str:
    """``body`` between dollar quotes whose tag it does not contain (a name may hold ``$$``)."""
    tag = "$$"
    while tag in body:
        tag = f"$sigma_db{len(tag)}$"
    return f"{tag}{body}{tag}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    """``value`` as an SQL string literal (standard_conforming_strings, PostgreSQL's default)."""
    return "'" + value.replace("'", "''") + "'"


def drop_index_concurrently(index_name: str, table_name: str, *, schema: str | None = None) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS``, outside the transaction (a contract step)."""
    with op.get_context().autocommit_block():
        _drop_concurrently(index_name, table_name, schema)
    _check_version_again()


def _drop_concurrently(index_name: str, table_name: str, schema: str | None) -> None:
    op.drop_index(
        index_name,
        table_name=table_name,
        schema=schema,
        postgresql_concurrently=True,
        if_exists=True,
    )


def run_in_batches(statement: str | TextClause, *, batch_size: int = 1000) -> int:
    """Run ``statement`` until it changes no row, committing after each run; return rows changed.

    ``statement`` changes at most ``:batch_size`` rows per run and must skip rows already done,
    or the loop never ends, e.g. ``UPDATE signals SET title = name WHERE id IN (SELECT id FROM
    signals WHERE title IS NULL AND name IS NOT NULL LIMIT :batch_size)`` (a NULL ``name`` would
    leave its row NULL and selected again without the second condition). Offline it renders as
    a ``DO`` block that loops and commits the same way (PostgreSQL 11 and later).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(
            f"batch_size={batch_size!r}: use a whole number of rows, at least 1."
        )
    clause = text(statement) if isinstance(statement, str) else statement
    if "batch_size" not in clause.compile().params:
        raise ConfigurationError(
            "run_in_batches: the statement must limit itself with :batch_size, e.g. "
            "'... WHERE id IN (SELECT id FROM t WHERE new IS NULL LIMIT :batch_size)'."
        )
    migration = op.get_context()
    if context.is_offline_mode():
        sql = str(
            clause.bindparams(batch_size=batch_size).compile(
                dialect=migration.dialect, compile_kwargs={"literal_binds": True}
            )
        )
        if BATCH_TAG in sql:
            raise ConfigurationError(f"run_in_batches: the statement contains {BATCH_TAG}.")
        # statement_timeout would bound the whole loop (one statement to the server), not each
        # batch as online: the loop runs without it, the lock_timeout still applies.
        with migration.autocommit_block(), _timeouts(None, "0"):
            op.execute(
                "DO $sigma_db$ DECLARE changed bigint; sigma_db_found text; BEGIN "
                f"{_version_check()} LOOP EXECUTE {BATCH_TAG}{sql}{BATCH_TAG}; "
                "GET DIAGNOSTICS changed = ROW_COUNT; EXIT WHEN changed = 0; COMMIT; "
                "END LOOP; END $sigma_db$"
            )
        _check_version_again()
        return 0
    with migration.autocommit_block():
        total = batches = 0
        while True:
            try:
                changed = op.get_bind().execute(clause, {"batch_size": batch_size}).rowcount
            except DBAPIError as exc:
                if not batches:
                    raise
                raise OutsideTransactionFailure(
                    exc,
                    f"the {batches} batch(es) before it ({total} row(s)) stay committed, and "
                    "running the migration again resumes after them",
                ) from exc
            if changed <= 0:
                return total
            total += changed
            batches += 1


def lint_ignore(*rules: str, reason: str) -> None:
    """Accept the named lint finding(s) on the next statement; ``reason`` is mandatory.

    The ignore lives in the rendered SQL as a comment, so reviewers see it beside the statement.
    """
    reason = " ".join(reason.split())
    if not rules or not reason:
        raise ConfigurationError(
            "lint_ignore needs at least one rule and a reason, e.g. "
            "lint_ignore('require-concurrent-index-creation', reason='table is empty here')."
        )
    if context.is_offline_mode():
        op.get_context().impl.static_output(f"{IGNORE_MARK}{','.join(rules)} -- {reason}")
