"""``sigma-db migrate`` (``--dry-run``), ``sigma-db migrations lock`` and ``... repair``.

Run in a product repository (where ``alembic.ini`` is). Every problem the user can fix ends as a
:class:`~sigma_db.SigmaDBError` (one ``sigma-db: error:`` line); the dry run prints one
``problem:`` line per finding on stderr and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from alembic.config import Config

    from sigma_db.settings import DatabaseSettings

__all__ = ["migrate_command", "migrations_group"]

_CONFIG = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("alembic.ini"),
    show_default=True,
    help="The product's Alembic config.",
)


@click.command("migrate")
@_CONFIG
@click.option("--dry-run", is_flag=True, help="Check and show what would run; change nothing.")
@click.option(
    "--sql/--no-sql", default=True, help="With --dry-run: print each pending revision's SQL."
)
@click.option(
    "--require-database",
    is_flag=True,
    help="With --dry-run: fail when the database cannot be reached (the CI gate).",
)
@click.option("--to", "target", default="head", show_default=True, help="Target revision.")
def migrate_command(
    config_path: Path, dry_run: bool, sql: bool, require_database: bool, target: str
) -> None:
    """Apply pending revisions (db-migrate); --dry-run lists and checks them (db-migrate-dry)."""
    from sigma_db.errors import SigmaDBError
    from sigma_db.migrations.commands import load_config, migrate
    from sigma_db.migrations.environment import APPLIED_KEY
    from sigma_db.settings import DatabaseSettings

    if require_database and not dry_run:
        raise click.UsageError("--require-database goes with --dry-run")
    settings = DatabaseSettings()
    config = load_config(config_path, settings)
    if dry_run:
        _dry_run(config, settings, show_sql=sql, require_database=require_database, target=target)
        return
    click.echo(f"migrating {settings.display_dsn} schema {settings.topology.schema}")
    try:
        applied = migrate(config, settings, target)
    except SigmaDBError:
        # Each revision commits on its own: say which ones this run did commit before failing.
        done = config.attributes.get(APPLIED_KEY) or []
        for line in done:
            click.echo(f"  {line}")
        if done:
            click.echo(f"{len(done)} revision(s) applied and committed before the failure")
        raise
    for line in applied:
        click.echo(f"  {line}")
    click.echo(f"ok: {len(applied)} revision(s) applied" if applied else "ok: already up to date")


def _dry_run(
    config: Config,
    settings: DatabaseSettings,
    *,
    show_sql: bool,
    require_database: bool,
    target: str,
) -> None:
    from sigma_db.migrations.dryrun import dry_run
    from sigma_db.migrations.lint import RenderedRevision

    report = dry_run(config, settings, require_database=require_database, target=target)
    click.echo(f"dry run: {report.target} (nothing is written)")
    state = report.database
    if not state.asked:
        click.echo(f"database: not asked ({state.reason})")
    elif state.reachable:
        at = ", ".join(state.heads) or "empty (no revision applied)"
        click.echo(f"database: reachable, at {at}; {len(report.pending)} pending")
    else:
        click.echo(
            f"database: NOT reachable, offline checks only (lock file, SQL, lint of every "
            f"revision): {state.reason}"
        )
    for chunk in report.pending:
        assert isinstance(chunk, RenderedRevision)
        rev = chunk.revision
        phase = rev.phase.value if rev.phase else "no phase"
        click.echo(f"\npending {rev.revision} {rev.description} ({phase}) {rev.name}")
        if show_sql:
            for line in chunk.sql.strip().splitlines():
                click.echo(f"    {line}")
    click.echo("")
    for finding in report.findings:
        click.echo(f"problem: {finding.line()}", err=True)
    if not report.ok:
        click.echo(f"dry run: {len(report.findings)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo("dry run: ok, no problems")


@click.group("migrations")
def migrations_group() -> None:
    """Maintain the revision checksum lock file and the migration ledger."""


@migrations_group.command("lock")
@_CONFIG
@click.option(
    "--accept",
    multiple=True,
    metavar="REVISION",
    help="Accept an edit of a locked revision that was never applied anywhere.",
)
def lock_command(config_path: Path, accept: tuple[str, ...]) -> None:
    """Record the checksum of every new revision in migrations/checksums.lock (commit it)."""
    from sigma_db.migrations.commands import load_config, lock

    path, changes = lock(load_config(config_path), accept)
    for change in changes:
        click.echo(change)
    click.echo(f"ok: {path} {'updated' if changes else 'already up to date'}")


@migrations_group.command("repair")
@_CONFIG
@click.argument("revisions", metavar="REVISION...", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why the edit of an applied revision is safe.")
def repair_command(config_path: Path, revisions: tuple[str, ...], reason: str) -> None:
    """Accept a deliberate edit of applied REVISIONs: ledger row (who, why) and lock file.

    Several revisions take one command (a formatter run over many files); each is repaired on
    its own, in the order given, and a failure stops before the next.
    """
    from sigma_db.migrations.commands import load_config, repair
    from sigma_db.settings import DatabaseSettings

    settings = DatabaseSettings()
    config = load_config(config_path, settings)
    for revision in revisions:
        click.echo(repair(config, settings, revision, reason))
