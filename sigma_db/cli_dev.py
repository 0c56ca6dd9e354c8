"""``sigma-db dev up|env|status|down|reset``: the local dev database from the command line."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sigma_db.dev import DevDatabase

__all__ = ["dev"]


@click.group()
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    help="State directory (default: SIGMA_DB_DEV_HOME, else the user data directory).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), help="TCP port (default: SIGMA_DB_DEV_PORT or 54329)."
)
@click.pass_context
def dev(ctx: click.Context, home: Path | None, port: int | None) -> None:
    """A local PostgreSQL with edge_products and every product's roles (no Docker)."""
    from sigma_db.dev import DevDatabase

    ctx.obj = DevDatabase.from_environment(home=home, port=port)
    if ctx.obj.note:
        click.echo(f"note: {ctx.obj.note}", err=True)


@dev.command()
@click.option(
    "--product",
    "products",
    multiple=True,
    help="Also provision this product (one made by new-product); repeatable, remembered.",
)
@click.pass_obj
def up(database: DevDatabase, products: tuple[str, ...]) -> None:
    """Start the server and create edge_products, its schemas, roles and dev logins."""
    status = database.up(products)
    if status.plan is not None and status.plan.changed:
        click.echo(f"provisioned: {len(status.plan.statements)} statements applied")
    else:
        click.echo("already provisioned: no changes")
    click.echo(f"running on 127.0.0.1:{status.port} (state in {status.home})")
    shown = products[0] if products else "lab"
    click.echo(f'next: eval "$(sigma-db dev env {shown})"')


@dev.command()
@click.argument("product")
@click.option(
    "--role",
    "kind",
    type=click.Choice(["rw", "ro", "migrator"]),
    default="rw",
    show_default=True,
    help="Which of the product's roles to log in as.",
)
@click.pass_obj
def env(database: DevDatabase, product: str, kind: str) -> None:
    """Print shell export lines for PRODUCT (includes the local dev password)."""
    values = database.env(product, kind)
    click.echo("unset DB_PASSWORD_FILE DB_PRODUCT")
    for name, value in values.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@dev.command()
@click.pass_obj
def status(database: DevDatabase) -> None:
    """Show whether the dev server runs, where, and on which port."""
    state = database.status()
    running = "running" if state.running else "stopped"
    if not state.initialised:
        running = "not created (run sigma-db dev up)"
    click.echo(f"dev database: {running}")
    click.echo(f"port:         {state.port}")
    click.echo(f"state:        {state.home}")


@dev.command()
@click.pass_obj
def down(database: DevDatabase) -> None:
    """Stop the server (data is kept)."""
    click.echo("stopped" if database.down() else "not running")


@dev.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def reset(database: DevDatabase, yes: bool) -> None:
    """Delete the dev database (all data, all dev passwords) and create it afresh."""
    if not yes:
        click.confirm(f"Delete all data in {database.home} and start afresh?", abort=True)
    status = database.reset()
    click.echo(f"reset: running on 127.0.0.1:{status.port} with fresh passwords")
