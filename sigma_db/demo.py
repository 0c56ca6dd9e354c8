"""``sigma-db demo``: the main job end to end on a throwaway local server.

It is the README's first command: a new engineer (or CI) sees every layer work together — a
local PostgreSQL started as an unprivileged user, the consolidated dev layout, a naming-checked
model, a unit of work — and the printed steps double as a tour.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sigma_db.engine import create_engine
from sigma_db.models import IdentityPrimaryKey, ProductBase, Timestamps
from sigma_db.server import LocalServer, free_port, owned_directory, server_user
from sigma_db.session import create_session_factory, session_scope
from sigma_db.settings import DatabaseSettings
from sigma_db.topology import CONSOLIDATED_DATABASE

__all__ = ["run_demo"]

Echo = Callable[[str], None]


class Base(ProductBase, DeclarativeBase):
    """The demo product's base: one line, its own MetaData and naming rules."""


class Pack(IdentityPrimaryKey, Timestamps, Base):
    """A Lab pack; the table name ``packs`` is derived from the class name."""

    name: Mapped[str] = mapped_column(String(80), unique=True)


class AuditLog(IdentityPrimaryKey, Timestamps, Base):
    """An audit entry in the logical ``audit`` area (``lab_audit`` in the consolidated DB)."""

    __table_args__ = {"schema": "audit"}
    action: Mapped[str] = mapped_column(String(80))


@contextmanager
def _step(echo: Echo, title: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    echo(f"  ok  {title} ({(time.perf_counter() - started) * 1000:.0f} ms)")


def run_demo(echo: Echo = print) -> None:
    """Start a local server, lay out the Lab product, write and read rows, stop the server."""
    root = Path(tempfile.mkdtemp(prefix="sigma-db-demo-"))
    owned_directory(root, server_user())
    server = LocalServer(root, port=free_port(), password=secrets.token_urlsafe(18), durable=False)
    echo(f"sigma_db demo: Sigma Lab on a local PostgreSQL in {root}")
    try:
        with _step(echo, f"started PostgreSQL on 127.0.0.1:{server.port}"):
            server.start()
        settings = DatabaseSettings(
            _env_file=None,
            host="127.0.0.1",
            port=server.port,
            name=CONSOLIDATED_DATABASE,
            user=server.superuser,
            password=server.password,
            password_file=None,
            schema_name="lab",
            product=None,
            env="dev",
            sslmode="disable",
            pooler="none",
        )
        topology = settings.topology
        with _step(
            echo,
            f"created database {topology.database} with schemas "
            f"{topology.schema}, {topology.physical_schema('audit')}",
        ):
            _create_layout(server, settings)
        engine = create_engine(settings)
        try:
            with _step(echo, f"mapped tables {', '.join(sorted(Base.metadata.tables))}"):
                Base.metadata.create_all(engine)
            factory = create_session_factory(engine)
            wrote = "wrote 3 packs and their audit entries in one unit of work"
            with _step(echo, wrote), session_scope(factory) as session:
                for name in ("momentum", "carry", "value"):
                    session.add(Pack(name=name))
                    session.add(AuditLog(action=f"create pack {name}"))
            with session_scope(factory) as session:
                packs = session.scalars(select(Pack).order_by(Pack.id)).all()
                audits = session.scalar(select(func.count()).select_from(AuditLog))
            for pack in packs:
                echo(f"      pack {pack.id}: {pack.name} (created {_when(pack.created_at)})")
            echo(f"  ok  read back {len(packs)} packs and {audits} audit entries")
        finally:
            engine.dispose()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        echo("  ok  stopped the server and removed its files")
    echo("done.")


def _create_layout(server: LocalServer, settings: DatabaseSettings) -> None:
    conninfo: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "user": server.superuser,
        "password": server.password,
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.name)))
    with psycopg.connect(dbname=settings.name, autocommit=True, **conninfo) as conn:
        for schema in (settings.topology.schema, settings.topology.physical_schema("audit")):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")
