"""What the ``sigma-db`` migration verbs do, callable from Python (nox sessions, tests, tools).

:func:`migrate` runs ``alembic upgrade`` in-process through the product's env.py;
:func:`lock` updates ``checksums.lock``; :func:`repair` accepts a deliberate edit of an applied
revision, recording who and why in the ledger and in the lock file.
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from sigma_db.errors import ConfigurationError
from sigma_db.migrations.environment import (
    APPLIED_KEY,
    SETTINGS_KEY,
    acquire_advisory_lock,
    advisory_lock_key,
    bookkeeping_revokes,
    database_failure,
    migration_engine,
    release_advisory_lock,
    revoke_bookkeeping_writes,
)
from sigma_db.migrations.errors import MigrationError
from sigma_db.migrations.ledger import (
    APPLIED_BY,
    applied_revisions,
    client_name,
    ledger_exists,
    ledger_table,
    read_ledger,
)
from sigma_db.migrations.lockfile import LOCK_FILE_NAME, lock_revision, read_lock, update_lock
from sigma_db.migrations.revisions import check_target, load_revisions, revision_files
from sigma_db.settings import DatabaseSettings

__all__ = ["load_config", "lock", "migrate", "repair"]


def load_config(path: Path, settings: DatabaseSettings | None = None) -> Config:
    """The product's Alembic config; ``settings`` (if given) are handed to env.py."""
    if not path.is_file():
        raise ConfigurationError(
            f"No Alembic config at {path}: run in the product repository (where alembic.ini "
            "is) or pass --config PATH."
        )
    config = Config(str(path))
    if settings is not None:
        config.attributes[SETTINGS_KEY] = settings
    return config


def migrate(config: Config, settings: DatabaseSettings, target: str = "head") -> list[str]:
    """Upgrade to ``target``; return ``"upgrade 0002"``-style lines for what was applied."""
    script = load_revisions(config)
    config.attributes[SETTINGS_KEY] = settings
    applied: list[str] = []
    config.attributes[APPLIED_KEY] = applied
    check_target(target, script)
    try:
        command.upgrade(config, target)
    except MigrationError:
        raise
    except (CommandError, RevisionError) as exc:
        raise MigrationError(_explain(str(exc), target)) from exc
    return applied


def lock(config: Config, accept: tuple[str, ...] = ()) -> tuple[Path, list[str]]:
    """Add new revisions to the lock file (and accepted edits); return its path and changes."""
    script = load_revisions(config)
    path = Path(script.dir) / LOCK_FILE_NAME
    return path, update_lock(path, revision_files(script), accept=accept)


def repair(config: Config, settings: DatabaseSettings, revision: str, reason: str) -> str:
    """Record the current content of an applied ``revision`` as accepted, with ``reason``."""
    reason = " ".join(reason.split())
    if len(reason) < 3:
        given = f"--reason {reason!r} is too short" if reason else "--reason is empty"
        raise ConfigurationError(f"{given}: say why the edit is safe, in a sentence.")
    script = load_revisions(config)
    files = {f.revision: f for f in revision_files(script)}
    file = files.get(revision)
    if file is None:
        raise MigrationError(
            f"No revision file declares {revision}; restore it first (repair accepts an edited "
            "file, not a missing one)."
        )
    lock_path = Path(script.dir) / LOCK_FILE_NAME
    read_lock(lock_path)  # a corrupt lock file stops the repair before the ledger is written
    schema = settings.topology.schema
    table = ledger_table(schema)
    key = advisory_lock_key(settings.topology)
    engine = migration_engine(settings)
    try:
        with engine.connect() as connection:
            acquire_advisory_lock(connection, key)
            try:
                rows = read_ledger(connection, schema)
                applied = applied_revisions(rows)
                heads = MigrationContext.configure(
                    connection, opts={"version_table_schema": schema}
                ).get_current_heads()
                lineage = {rev.revision for head in heads for rev in _lineage(script, head)}
                if revision not in applied and revision not in lineage:
                    raise MigrationError(
                        f"{revision} is not applied in {settings.display_dsn}; nothing to repair. "
                        f"To accept an edit of a revision never applied: sigma-db migrations lock "
                        f"--accept {revision}"
                    )
                current = applied.get(revision)
                if current is not None and current.checksum == file.checksum:
                    lock_revision(lock_path, file)
                    return f"{revision} already matches the ledger; lock file updated"
                if not ledger_exists(connection, schema):
                    table.create(connection)
                    revoke_bookkeeping_writes(connection, bookkeeping_revokes(schema))
                connection.execute(
                    table.insert().values(
                        revision=revision,
                        operation="repair",
                        description=file.description or None,
                        phase=None if file.phase is None else file.phase.value,
                        checksum=file.checksum,
                        applied_by=APPLIED_BY,
                        client=client_name(),
                        success=True,
                        reason=reason,
                    )
                )
                connection.commit()
            finally:
                release_advisory_lock(connection, key)
    except SQLAlchemyError as exc:
        raise MigrationError(database_failure(settings, exc, "repair the ledger of")) from exc
    finally:
        engine.dispose()
    lock_revision(lock_path, file)
    return f"repaired {revision} ({file.name}): sha256 {file.checksum[:12]} accepted ({reason})"


def _lineage(script: ScriptDirectory, head: str) -> list[Script]:
    try:
        return [rev for rev in script.iterate_revisions(head, "base") if isinstance(rev, Script)]
    except (CommandError, RevisionError) as exc:
        raise MigrationError(_unknown_database_revision(head)) from exc


def _explain(message: str, target: str) -> str:
    missing = re.search(r"Can't locate revision identified by '([^']+)'", message)
    if missing and missing.group(1) == target:
        return f"--to {target}: no revision file declares it; name a revision number or head"
    if missing:
        return _unknown_database_revision(missing.group(1))
    if target.startswith("+") and "Relative revision" in message:
        return (
            f"--to {target}: fewer revisions than that are pending; name a revision number, "
            "head, or +N within what is pending (sigma-db migrate --dry-run lists them)"
        )
    return message


def _unknown_database_revision(revision: str) -> str:
    return (
        f"the database is at revision {revision}, which no revision file declares; restore the "
        f"file from version control (git checkout -- 'migrations/versions/{revision}_*.py'), or "
        "check that DB_* points at the right database"
    )
