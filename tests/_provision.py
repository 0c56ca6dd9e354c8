"""Provision a product's roles (and one login per role) in a test database."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pydantic import SecretStr

from sigma_db import DatabaseSettings
from sigma_db.roles import Login, ProductRoles, RoleKind, RolePlan, sync_roles
from sigma_db.testing import TestServer
from sigma_db.topology import PRODUCTS, Topology


@dataclass
class Provisioned:
    """A product's roles in one database, and a login (with password) for each kind."""

    server: TestServer
    admin: DatabaseSettings
    topology: Topology
    logins: dict[RoleKind, str]
    passwords: dict[RoleKind, str] = field(repr=False)
    plan: RolePlan

    @property
    def target(self) -> ProductRoles:
        return ProductRoles(
            self.topology,
            tuple(
                Login(name, kind, SecretStr(self.passwords[kind]))
                for kind, name in self.logins.items()
            ),
        )

    def settings(self, kind: RoleKind, **overrides: Any) -> DatabaseSettings:
        values: dict[str, Any] = {
            "user": self.logins[kind],
            "password": self.passwords[kind],
            "schema_name": self.admin.schema_name,
            "product": self.admin.product,
        }
        return self.server.settings(self.admin.name, **(values | overrides))

    @contextmanager
    def connect(
        self, kind: RoleKind, *, host: str | None = None, port: int | None = None, **kwargs: Any
    ) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(
            host=host or self.server.host,
            port=port or self.server.port,
            dbname=self.admin.name,
            user=self.logins[kind],
            password=self.passwords[kind],
            autocommit=True,
            **kwargs,
        ) as conn:
            yield conn

    @contextmanager
    def admin_connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self.server.connect(self.admin.name) as conn:
            yield conn


def unique_key(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def provision(
    server: TestServer, database: str, *, product: str | None = None, schema: str = "app"
) -> Provisioned:
    """Apply the roles of ``product`` (a new unique one by default) with a login per kind."""
    key = product or unique_key()
    if database == "edge_products":
        # A seed product is named by its schema alone; a new one needs DB_PRODUCT too.
        admin = server.settings(database, schema_name=key, product=None if key in PRODUCTS else key)
    else:
        admin = server.settings(database, schema_name=schema, product=key)
    logins = {kind: f"{key}_{kind}_{uuid.uuid4().hex[:6]}" for kind in RoleKind}
    passwords = {kind: secrets.token_urlsafe(16) for kind in RoleKind}
    result = Provisioned(server, admin, admin.topology, logins, passwords, plan=None)  # type: ignore[arg-type]
    result.plan = sync_roles(admin, [result.target], apply=True)
    return result
