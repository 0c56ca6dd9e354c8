"""A sample product repository built from the shipped templates (imported by the tests)."""

from __future__ import annotations

import io
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _connect import connect
from alembic import command
from alembic.config import Config

from sigma_db import DatabaseSettings
from sigma_db.migrations import write_layout
from sigma_db.migrations.environment import APPLIED_KEY, SETTINGS_KEY

MODELS = """
from sqlalchemy.orm import DeclarativeBase

from sigma_db.models import ProductBase


class Base(ProductBase, DeclarativeBase):
    pass
"""

REVISION = '''"""{message}"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sigma_db.migrations import ops

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
{phase_line}
{extra}

def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


@dataclass
class ProductRepo:
    """A product repository on disk plus the settings that point it at a database."""

    root: Path
    settings: DatabaseSettings
    models: str
    written: list[str] = field(default_factory=list)

    @property
    def versions(self) -> Path:
        return self.root / "migrations" / "versions"

    def config(self, settings: DatabaseSettings | None = None) -> Config:
        cfg = Config(str(self.root / "alembic.ini"), output_buffer=io.StringIO())
        cfg.attributes[SETTINGS_KEY] = settings or self.settings
        return cfg

    def add(
        self,
        message: str,
        upgrade: str = "pass",
        downgrade: str = "pass",
        *,
        phase: str | None = "expand",
        extra: str = "",
        revision: str | None = None,
        down: str | bool | None = True,
    ) -> Path:
        """Write the next numbered revision file directly (fast; numbering has its own test)."""
        number = revision or f"{len(self.written) + 1:04d}"
        if down is True:
            down = self.written[-1] if self.written else None
        slug = "_".join(message.lower().split())
        path = self.versions / f"{number}_{slug}.py"
        path.write_text(
            REVISION.format(
                message=message,
                revision=number,
                down=down,
                phase_line="" if phase is None else f"phase = {phase!r}",
                extra=textwrap.dedent(extra),
                upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
                downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
            ),
            encoding="utf-8",
        )
        self.written.append(number)
        return path

    def upgrade(self, target: str = "head", settings: DatabaseSettings | None = None) -> list[str]:
        cfg = self.config(settings)
        command.upgrade(cfg, target)
        return list(cfg.attributes[APPLIED_KEY])

    def sql(self, target: str = "head", settings: DatabaseSettings | None = None) -> str:
        cfg = self.config(settings)
        command.upgrade(cfg, target, sql=True)
        buffer = cfg.output_buffer
        assert isinstance(buffer, io.StringIO)
        return buffer.getvalue()

    def query(
        self, sql: str, settings: DatabaseSettings | None = None, *, in_schema: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` (autocommit); ``in_schema``: unqualified names resolve in the product's."""
        s = settings or self.settings
        options = f"-csearch_path={s.topology.schema}" if in_schema else None
        with connect(s, options=options) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []


def make_repo(root: Path, settings: DatabaseSettings) -> ProductRepo:
    root.mkdir(parents=True, exist_ok=True)
    models = f"models_{uuid.uuid4().hex[:10]}"
    (root / f"{models}.py").write_text(MODELS, encoding="utf-8")
    write_layout(root, models_module=models, product=settings.topology.product.key)
    return ProductRepo(root, settings, models)


def db_env(settings: DatabaseSettings) -> dict[str, str]:
    """The DB_* variables a command run in the repo reads for ``settings``."""
    return {
        "DB_HOST": settings.host,
        "DB_PORT": str(settings.port),
        "DB_NAME": settings.name,
        "DB_USER": settings.user,
        "DB_PASSWORD": settings.secret(),
        "DB_SCHEMA": settings.topology.schema,
        "DB_PRODUCT": settings.topology.product.key,
        "DB_SSLMODE": "disable",
    }
