"""A product repository under test: migrated once into a template database, cloned per test.

Migrating per test costs every revision every time; ``CREATE DATABASE … TEMPLATE`` copies the
migrated result in one file-level copy. The template is built the way production is: the
product's roles exist, a migrator login runs ``alembic upgrade head`` (so what it creates is
owned by ``<db>_migrator`` and the default privileges reach ``_rw`` and ``_ro``), and tests
connect as the ``_rw`` and ``_ro`` logins.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from sigma_db.roles import Login, ProductRoles, RoleKind, group_role, sync_roles
from sigma_db.settings import DatabaseSettings
from sigma_db.testing.server import TestServer

__all__ = ["ProductTemplate", "build_template", "clone_database", "drop_database"]


@dataclass(frozen=True)
class ProductTemplate:
    """The migrated template database and the logins that act as the product's roles."""

    server: TestServer
    product: str
    database: str
    passwords: dict[RoleKind, str] = field(repr=False)

    def login(self, kind: RoleKind | str) -> str:
        """The test login acting as ``<db>_<kind>``."""
        return f"{self.template_group(kind)}_test"

    def template_group(self, kind: RoleKind | str) -> str:
        """The product's group role of that kind."""
        return group_role(
            self.server.settings(self.database, product=self.product).topology.product, kind
        )

    def settings(self, database: str, kind: RoleKind | str, **overrides: Any) -> DatabaseSettings:
        """Settings for ``database`` logged in as the test login of role ``kind``."""
        role = RoleKind(kind)
        return self.server.settings(
            database,
            product=self.product,
            user=self.login(role),
            password=SecretStr(self.passwords[role]),
            **overrides,
        )


def _admin(server: TestServer, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=server.superuser,
        password=server.password,
        dbname=dbname,
        autocommit=True,
    )


def build_template(server: TestServer, product: str, alembic_ini: Path) -> ProductTemplate:
    """Create the product's roles and a template database migrated to head, as the migrator."""
    from sigma_db.migrations.commands import load_config, migrate

    database = f"tmpl_{product}_{uuid.uuid4().hex[:8]}"
    with _admin(server) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    admin_settings = server.settings(database, product=product)
    passwords = {kind: secrets.token_urlsafe(18) for kind in RoleKind}
    topology = admin_settings.topology
    logins = tuple(
        Login(f"{group_role(topology.product, kind)}_test", kind, SecretStr(passwords[kind]))
        for kind in RoleKind
    )
    sync_roles(admin_settings, [ProductRoles(topology, logins)], apply=True)
    template = ProductTemplate(server, product, database, passwords)
    migrator = template.settings(database, RoleKind.MIGRATOR)
    migrate(load_config(alembic_ini, migrator), migrator)
    with _admin(server) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(database)
            )
        )
    return template


def clone_database(server: TestServer, template: str) -> str:
    """A new database copied from ``template``; returns its name."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with _admin(server) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return name


def drop_database(server: TestServer, name: str) -> None:
    """Drop ``name``, ending any connection still open to it."""
    with _admin(server) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
