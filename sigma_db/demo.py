"""``sigma-db demo``: the main job end to end, on a private local dev database.

It is the README's first command. In one run a new engineer (or CI) sees every layer work
together, the way a product team uses them: the local dev database with every product's roles,
a product repository generated from the template, its migrations applied as the migrator, rows
written and read as the API's role (one of them into a date partition), and the CI gate's dry
run. Nothing outside a temporary directory is touched; the server is stopped at the end.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from sigma_db.dev import DevDatabase
from sigma_db.engine import create_engine
from sigma_db.roles import RoleKind
from sigma_db.server import free_port
from sigma_db.session import create_session_factory, session_scope
from sigma_db.settings import DatabaseSettings

__all__ = ["run_demo"]

Echo = Callable[[str], None]
PRODUCT = "lab"


@contextmanager
def _step(echo: Echo, title: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    echo(f"  ok  {title} ({(time.perf_counter() - started) * 1000:.0f} ms)")


def run_demo(echo: Echo = print) -> None:
    """Dev database → new product → migrate → write/read as _rw → dry run; then clean up."""
    from sigma_db.migrations.commands import load_config, migrate
    from sigma_db.migrations.dryrun import dry_run
    from sigma_db.scaffold import new_product

    # The generated env.py configures logging from alembic.ini (INFO per revision); the demo
    # prints its own summary of each step instead.
    logging.disable(logging.INFO)
    workdir = Path(tempfile.mkdtemp(prefix="sigma-db-demo-"))
    workdir.chmod(0o755)  # the server user must reach the dev home inside it
    dev = DevDatabase(workdir / "dev", free_port())
    echo(f"sigma_db demo: Sigma Lab end to end, in {workdir}")
    try:
        with _step(
            echo,
            f"local dev database up on 127.0.0.1:{dev.port}: edge_products, "
            "a schema and three roles per product",
        ):
            dev.up()
        with _step(echo, "generated the Lab product repository (sigma-db new-product lab)"):
            generated = new_product(PRODUCT, workdir / "lab-service")
        migrator = DatabaseSettings.from_env(dev.env(PRODUCT, RoleKind.MIGRATOR))
        api = DatabaseSettings.from_env(dev.env(PRODUCT, RoleKind.RW))
        config = load_config(generated.destination / "alembic.ini", migrator)
        with _step(echo, f"migrated schema {migrator.topology.schema} as {migrator.user}"):
            applied = migrate(config, migrator)
        echo(f"      applied: {', '.join(applied) or 'nothing (already at head)'}")
        with _step(echo, f"wrote and read rows as {api.user} (the API's role)"):
            lines = _write_and_read(generated.destination, generated.package, api)
        for line in lines:
            echo(f"      {line}")
        with _step(echo, "dry run (the CI gate): checksums, ledger, lint"):
            report = dry_run(config, migrator)
        state = report.database
        echo(
            f"      database at {', '.join(state.heads) or 'base'}, "
            f"{len(report.pending)} pending, {len(report.findings)} problems"
        )
        if not report.ok:
            raise SystemExit(
                "demo: the dry run found problems: " + "; ".join(map(str, report.findings))
            )
    finally:
        dev.down()
        shutil.rmtree(workdir, ignore_errors=True)
        logging.disable(logging.NOTSET)
        echo("  ok  stopped the dev database and removed the demo directory")
    echo("done: dev database → new product → migrate → read/write as _rw → dry run.")


def _write_and_read(repo: Path, package: str, settings: DatabaseSettings) -> list[str]:
    sys.path.insert(0, str(repo))
    try:
        models: Any = importlib.import_module(f"{package}.models")
    finally:
        sys.path.remove(str(repo))
    engine = create_engine(settings)
    try:
        sessions = create_session_factory(engine)
        with session_scope(sessions) as session:
            for name in ("momentum", "carry", "value"):
                session.add(models.Pack(name=name))
            session.add(
                models.AuditLog(occurred_at=datetime.now(UTC), actor="demo", action="create packs")
            )
        with session_scope(sessions) as session:
            packs = session.scalars(select(models.Pack.name).order_by(models.Pack.id)).all()
            audits = session.scalar(select(func.count()).select_from(models.AuditLog))
            partition = session.scalar(text("SELECT tableoid::regclass::text FROM audit_logs"))
    finally:
        engine.dispose()
    return [
        f"packs: {', '.join(packs)}",
        f"audit_logs: {audits} row, stored in partition {partition}",
    ]
