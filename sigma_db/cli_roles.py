"""``sigma-db roles plan|apply``: the role plan from the command line.

The admin connection comes from the ``DB_*`` settings (a superuser, or a CREATEROLE role that
owns the database). Login passwords come from an environment variable or a file, never from an
argument: arguments end up in shell history and ``ps`` output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import utf8_problem

if TYPE_CHECKING:
    from sigma_db.roles import Login, ProductRoles
    from sigma_db.settings import DatabaseSettings

__all__ = ["roles"]


@click.group()
def roles() -> None:
    """Plan and apply each product's <db>_migrator, <db>_rw and <db>_ro roles.

    Connects as the admin named by the DB_* settings (DB_NAME picks the database).
    """


_options = [
    click.option(
        "--product",
        "products",
        multiple=True,
        metavar="KEY",
        help="Product key (repeatable in edge_products); default: the one DB_NAME/DB_SCHEMA name.",
    ),
    click.option(
        "--all-products",
        is_flag=True,
        help="Every seed product (only in the consolidated dev database edge_products).",
    ),
    click.option(
        "--login",
        "logins",
        multiple=True,
        metavar="NAME:KIND",
        help="Attach login role NAME to the group of KIND (migrator, rw or ro); repeatable.",
    ),
    click.option(
        "--password-env",
        metavar="VAR",
        help="Environment variable holding the (single) --login's password, to create or set it.",
    ),
    click.option(
        "--password-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="File holding the (single) --login's password, to create or set it.",
    ),
]


def _with_options(function: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_options):
        function = option(function)
    return function


@roles.command("plan")
@_with_options
def plan_command(
    products: tuple[str, ...],
    all_products: bool,
    logins: tuple[str, ...],
    password_env: str | None,
    password_file: Path | None,
) -> None:
    """Print the SQL that `roles apply` would run (passwords shown as a placeholder)."""
    _run(products, all_products, logins, password_env, password_file, apply=False)


@roles.command("apply")
@_with_options
def apply_command(
    products: tuple[str, ...],
    all_products: bool,
    logins: tuple[str, ...],
    password_env: str | None,
    password_file: Path | None,
) -> None:
    """Create or repair the roles, grants and settings; a second run changes nothing."""
    _run(products, all_products, logins, password_env, password_file, apply=True)


def _run(
    products: tuple[str, ...],
    all_products: bool,
    logins: tuple[str, ...],
    password_env: str | None,
    password_file: Path | None,
    *,
    apply: bool,
) -> None:
    from sigma_db.roles import sync_roles

    settings, targets = _targets(products, all_products, logins, password_env, password_file)
    plan = sync_roles(settings, targets, apply=apply)
    click.echo(f"-- connected as {settings.display_dsn}")
    click.echo(plan.render())
    if apply:
        if plan.changed:
            click.echo(f"-- applied {len(plan.statements)} statements")
        else:
            click.echo("-- nothing to apply")


def _targets(
    products: tuple[str, ...],
    all_products: bool,
    logins: tuple[str, ...],
    password_env: str | None,
    password_file: Path | None,
) -> tuple[DatabaseSettings, list[ProductRoles]]:
    from sigma_db.roles import ProductRoles
    from sigma_db.topology import PRODUCTS, Product, resolve_topology

    settings = _admin_settings(products, all_products)
    topology = settings.topology
    if all_products:
        if not topology.consolidated:
            raise ConfigurationError(
                f"--all-products only applies to the consolidated dev database edge_products; "
                f"DB_NAME={settings.name} holds one product, so drop --all-products."
            )
        products = tuple(PRODUCTS)
    keys = list(dict.fromkeys(products)) or [topology.product.key]
    known = set(PRODUCTS) | {topology.product.key}
    if settings.product:
        known.add(settings.product)
    for key in keys:
        if key not in known:
            product = Product.named(key)  # a name no product may have is refused as such first
            raise ConfigurationError(
                f"Unknown product {key!r}; known products are {', '.join(sorted(known))}. A new "
                f"product's roles live in its own database (DB_NAME={product.database}), or in "
                f"the consolidated dev database with DB_PRODUCT={key}."
            )
        if not topology.consolidated and key != topology.product.key:
            raise ConfigurationError(
                f"--product {key} does not match DB_NAME={settings.name} "
                f"({topology.product.title}'s database); set DB_NAME to {key}'s database."
            )
    attached = _logins(logins, password_env, password_file)
    if attached and len(keys) > 1:
        raise ConfigurationError("--login needs exactly one --product; run once per product.")
    targets = []
    for key in keys:
        resolved = topology
        if topology.consolidated:
            resolved = resolve_topology(
                database=settings.name,
                schema=key,
                environment=settings.env,
                product=key if key not in PRODUCTS else None,
            )
        targets.append(ProductRoles(resolved, attached))
    return settings, targets


def _admin_settings(products: tuple[str, ...], all_products: bool) -> DatabaseSettings:
    """The admin's settings; in edge_products, the named products stand in for DB_SCHEMA.

    The admin is not any one product, so it need not set DB_SCHEMA for ``--product`` or
    ``--all-products``.
    """
    from sigma_db.settings import DatabaseSettings
    from sigma_db.topology import PRODUCTS

    try:
        return DatabaseSettings()
    except ConfigurationError:
        if not products and not all_products:
            raise
        # Any seed product's schema shows whether this is the consolidated database; the
        # product keys themselves are checked afterwards, with a message naming the bad one.
        for schema in dict.fromkeys([*products[:1], *PRODUCTS]):
            try:
                settings = DatabaseSettings(schema_name=schema)
            except ConfigurationError:
                continue
            if settings.topology.consolidated:
                return settings
        raise


def _logins(
    specs: tuple[str, ...], password_env: str | None, password_file: Path | None
) -> tuple[Login, ...]:
    from pydantic import SecretStr

    from sigma_db.roles import Login, RoleKind

    if password_env and password_file:
        raise ConfigurationError("Give --password-env or --password-file, not both.")
    secret: str | None = None
    if password_env or password_file:
        if len(specs) != 1:
            raise ConfigurationError(
                "--password-env/--password-file set the password of exactly one --login; "
                "run once per login."
            )
        secret = _read_secret(password_env, password_file)
    found: list[Login] = []
    for spec in specs:
        name, sep, kind = spec.partition(":")
        if not sep or kind not in {k.value for k in RoleKind}:
            raise ConfigurationError(
                f"--login {spec!r} must be NAME:KIND with KIND one of migrator, rw, ro "
                "(e.g. --login lab_api:rw)."
            )
        found.append(Login(name, RoleKind(kind), SecretStr(secret) if secret is not None else None))
    return tuple(found)


def _read_secret(password_env: str | None, password_file: Path | None) -> str:
    if password_env:
        value = os.environ.get(password_env, "")
        if not value:
            raise ConfigurationError(
                f"--password-env {password_env}: that environment variable is not set or empty; "
                f"export {password_env} with the password first."
            )
        source, where = f"--password-env {password_env}: the password", password_env
    else:
        assert password_file is not None
        try:
            value = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigurationError(
                f"--password-file {password_file} is not UTF-8 text; save the password in it "
                "as UTF-8."
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigurationError(
                f"--password-file {password_file} cannot be read ({reason}); give a readable "
                "file holding only the password."
            ) from None
        if not value:
            raise ConfigurationError(
                f"--password-file {password_file} is empty; put the password in it."
            )
        source, where = f"--password-file {password_file}", "the file"
    # libpq ends the password at a NUL: the role would get a shorter password than intended.
    if "\x00" in value:
        raise ConfigurationError(
            f"{source} contains a NUL byte, which libpq cannot send (the password would be cut "
            f"there); put only the real password in {where}."
        )
    if utf8_problem(value) is not None:
        raise ConfigurationError(
            f"{source} contains bytes that are not UTF-8; put the password in {where} as UTF-8 "
            "text."
        )
    return value
