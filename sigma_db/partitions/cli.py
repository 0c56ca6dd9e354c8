"""``sigma-db partitions``: the maintenance run for cron or a Kubernetes CronJob.

``sigma-db partitions maintain --models myproduct.models`` imports the product's models module
(the one that defines, or imports, its ``DatePartitioned`` models), connects with the ``DB_*``
settings and runs :meth:`~sigma_db.partitions.PartitionManager.maintain`. Exit status 0 when
every table is in order (or another run held the lock), 1 with one ``problem:`` line per table
otherwise.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import datetime, timedelta
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from sigma_db.errors import ConfigurationError, SigmaDBError

if TYPE_CHECKING:
    from sqlalchemy import Table

    from sigma_db.partitions.manager import MaintenanceReport, PartitionManager

__all__ = ["find_partitioned_tables", "partitions"]


@click.group()
def partitions() -> None:
    """Date-partitioned tables: create ahead, move rows out of DEFAULT, retire expired."""


@partitions.command()
@click.option(
    "--models",
    "models_module",
    envvar="SIGMA_DB_MODELS",
    required=True,
    metavar="MODULE",
    help="Import path of the module defining the product's models, e.g. lab_service.models "
    "(or SIGMA_DB_MODELS), imported from the working directory.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and its SQL; change nothing.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, max=86400),
    callback=lambda _ctx, param, value: _finite(param, value),
    default=0,
    show_default=True,
    help="Seconds to wait for another run's lock (0: skip at once; at most a day).",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0.1, max=3600),
    callback=lambda _ctx, param, value: _finite(param, value),
    default=5,
    show_default=True,
    help="Seconds any one DDL statement may wait for its table lock.",
)
@click.option(
    "--now",
    "now_text",
    metavar="ISO-8601",
    help="Act as if it were this instant (with a zone, e.g. 2026-11-27T00:00:00+00:00).",
)
def maintain(
    models_module: str, dry_run: bool, wait: float, lock_timeout: float, now_text: str | None
) -> None:
    """Create missing partitions, empty DEFAULT, detach and drop expired ones."""
    from sigma_db.partitions.manager import PartitionManager
    from sigma_db.settings import DatabaseSettings

    tables = find_partitioned_tables(_import(models_module))
    now = _parse_now(now_text)
    manager = PartitionManager(
        DatabaseSettings(), *tables, lock_timeout=timedelta(seconds=lock_timeout)
    )
    report = _maintain(manager, now, dry_run=dry_run, wait=wait)
    if dry_run and report.plan is not None:
        click.echo(f"plan at {report.plan.now.isoformat()} (DB_ENV={report.plan.environment}):")
        for line in report.plan.lines():
            click.echo(line)
    elif not report.skipped:
        click.echo(f"done in {report.seconds:.1f}s")
    problems = report.problem_lines()
    for line in problems:
        click.echo(f"problem: {line}", err=True)
    if problems:
        raise SystemExit(1)


def _finite(param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # nan passes every range check
        raise click.BadParameter(f"{value} is not a number of seconds", param=param)
    return value


def _maintain(
    manager: PartitionManager, now: datetime | None, *, dry_run: bool, wait: float
) -> MaintenanceReport:
    """The run, with any database error left over turned into one ``sigma-db: error:`` line."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    try:
        return manager.maintain(now, dry_run=dry_run, wait=wait, progress=click.echo)
    except (psycopg.Error, DBAPIError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        message = " ".join(str(cause).split())
        raise SigmaDBError(
            f"partition maintenance failed: {message} ({type(cause).__name__}); fix the cause "
            "and run it again (it is idempotent)"
        ) from exc


def find_partitioned_tables(module: ModuleType) -> list[Table]:
    """Every date-partitioned table reachable from ``module``: its models and their metadata."""
    from sigma_db.partitions.declaration import INFO_KEY

    found: dict[str, Table] = {}
    for value in vars(module).values():
        for table in _tables_of(value):
            if INFO_KEY in table.info:
                found.setdefault(table.fullname, table)
    if not found:
        raise ConfigurationError(
            f"module {module.__name__} defines no DatePartitioned models; pass --models the "
            "module that defines (or imports) them."
        )
    return list(found.values())


def _tables_of(value: Any) -> list[Table]:
    from sqlalchemy import MetaData

    if isinstance(value, MetaData):
        return list(value.sorted_tables)
    metadata = getattr(value, "metadata", None) if isinstance(value, type) else None
    if isinstance(metadata, MetaData):
        return list(metadata.sorted_tables)
    return []


def _import(name: str) -> ModuleType:
    # Console scripts do not put the working directory on sys.path; products run from their root.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not name.strip() or name.startswith("."):
        raise ConfigurationError(
            f"--models {name or repr(name)}: cannot import it (not an absolute module path); "
            f"{_models_hint(name)}"
        )
    try:
        return import_module(name)
    except SigmaDBError:
        raise  # the models' own error (a naming rule, say) already says what to fix
    except Exception as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and (name == missing or name.startswith(f"{missing}.")):
            # The module itself is not there: say where the models are, not what failed.
            raise ConfigurationError(
                f"--models {name}: cannot import it ({exc}); {_models_hint(name)}"
            ) from exc
        # It is there, but broken (or imports what is not installed): where, not a traceback.
        where = ""
        if isinstance(exc, SyntaxError) and exc.filename:
            where = f" at {os.path.basename(exc.filename)}:{exc.lineno}"
        reason = " ".join(str(exc).split())
        fix = "fix the module, or install what it imports" if missing else "fix the module"
        raise ConfigurationError(
            f"--models {name}: importing it failed{where} ({type(exc).__name__}: {reason}); {fix}"
        ) from exc


def _models_hint(failed: str) -> str:
    """How to fix ``--models``: the models modules found here, never the value that failed."""
    here = Path.cwd()
    found = [name for name in _models_modules(here) if name != failed]
    if len(found) == 1:
        return f"the models module here ({here}) is {found[0]}: pass --models {found[0]}"
    if found:
        listed = ", ".join(found[:5])
        return f"pass one of the models modules found here ({here}): --models {listed}"
    return (
        f"pass --models <your package>.models (a generated product's is <product>_service"
        f".models), run from the project root, the directory holding that package; {here} "
        "holds no package with a models module"
    )


def _models_modules(directory: Path) -> list[str]:
    """``<package>.models`` for each package in ``directory`` that has a ``models`` module."""
    found = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isidentifier() or not (entry / "__init__.py").is_file():
            continue
        if (entry / "models.py").is_file() or (entry / "models" / "__init__.py").is_file():
            found.append(f"{entry.name}.models")
    return found


def _parse_now(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    # The windows around it must exist too: a year or more away from datetime's ends.
    if value is not None and not 1 < value.year < 9999:
        raise ConfigurationError(f"--now {text!r} is out of range; use a year from 2 to 9998.")
    if value is None or value.tzinfo is None:
        raise ConfigurationError(
            f"--now {text!r} is not an ISO-8601 instant with a zone; "
            "e.g. 2026-11-27T00:00:00+00:00."
        )
    return value
