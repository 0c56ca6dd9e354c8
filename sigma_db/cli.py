"""The ``sigma-db`` command.

Every failure the user can fix ends as one message on stderr and exit status 1 (2 for a wrong
command line), never a traceback; ``SIGMA_DB_DEBUG=1`` shows the traceback for bug reports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from sigma_db.cli_dev import dev
from sigma_db.cli_roles import roles
from sigma_db.errors import SigmaDBError
from sigma_db.migrations.cli import migrate_command, migrations_group
from sigma_db.partitions.cli import partitions

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sigma-db", prog_name="sigma-db")
def cli() -> None:
    """Sigma's PostgreSQL SDK: settings, migrations, partitions, roles and local dev databases.

    Connection settings come from DB_* environment variables (and a .env file); see
    `sigma-db doctor` for what they resolve to.
    """


@cli.command()
def doctor() -> None:
    """Check the DB_* settings and the server they point at; exit 1 on any problem."""
    from sigma_db.doctor import diagnose
    from sigma_db.settings import DatabaseSettings

    diagnosis = diagnose(DatabaseSettings())
    width = max(len(label) for label in diagnosis.facts)
    for label, value in diagnosis.facts.items():
        click.echo(f"{label:<{width}}  {value}")
    if diagnosis.healthy:
        click.echo("\nok: no problems found")
        return
    click.echo("")
    for problem in diagnosis.problems:
        click.echo(f"problem: {problem}", err=True)
    raise SystemExit(1)


@cli.command()
def demo() -> None:
    """Run the main job end to end on a throwaway local PostgreSQL and print each step."""
    from sigma_db.demo import run_demo

    run_demo(click.echo)


cli.add_command(roles)
cli.add_command(dev)
cli.add_command(migrate_command)
cli.add_command(migrations_group)
cli.add_command(partitions)


@cli.command("new-product")
@click.argument("name")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to generate the repository (default: ./<name>-service).",
)
@click.option("--force", is_flag=True, help="Generate into a non-empty directory.")
@click.option(
    "--sigma-db",
    "requirement",
    metavar="REQUIREMENT",
    help="What the product depends on (default: sigma-db>=this version), e.g. "
    "'sigma-db @ git+https://git.example/sigma_db@v0.1.0' where sigma-db is on no index.",
)
def new_product(name: str, dest: Path | None, force: bool, requirement: str | None) -> None:
    """Generate a product repository: models, migrations, tests, CI, all green first try."""
    from sigma_db.scaffold import new_product as generate

    generated = generate(
        name, dest or Path(f"{name}-service"), force=force, sigma_db_requirement=requirement
    )
    click.echo(
        f"generated {generated.product.title} ({generated.product.database}) in "
        f"{generated.destination}; next: cd {generated.destination} && pip install -e '.[test]'"
    )
    if requirement is None:
        from sigma_db import __version__

        click.echo(
            f"note: that installs sigma-db>={__version__} from your package index; where the "
            "index has no sigma-db, regenerate with --force --sigma-db "
            f"'sigma-db @ git+https://…/sigma_db@v{__version__}'"
        )


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning sigma_db errors into one line and exit status 1."""
    try:
        return cli.main(args=argv, prog_name="sigma-db", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SigmaDBError as exc:
        if os.environ.get("SIGMA_DB_DEBUG", "0") not in ("", "0", "false"):
            raise
        click.echo(f"sigma-db: error: {exc}", err=True)
        sys.exit(1)
