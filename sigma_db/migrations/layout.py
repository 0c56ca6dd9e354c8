"""The migration files of a product repository, written from the templates shipped here.

::

    alembic.ini                  script_location = migrations, numbered file names
    migrations/env.py            five lines: the product's metadata → run_migrations()
    migrations/script.py.mako    revision template (phase, timeout overrides)
    migrations/versions/         0001_init.py, 0002_....py
    migrations/checksums.lock    written by `sigma-db migrations lock`

The new-product scaffold and the tests both build repositories with :func:`write_layout`, so the
templates are exercised end to end.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template

from sigma_db.errors import ConfigurationError

__all__ = ["TEMPLATE_FILES", "template_text", "write_layout"]

TEMPLATE_FILES = ("alembic.ini", "env.py.tmpl", "script.py.mako")
"""Package data under ``sigma_db/migrations/template/``."""


def template_text(name: str) -> str:
    """The text of one shipped template file."""
    if name not in TEMPLATE_FILES:
        raise ConfigurationError(f"no migration template {name!r}; use one of {TEMPLATE_FILES}.")
    return (files("sigma_db.migrations") / "template" / name).read_text(encoding="utf-8")


def write_layout(root: Path, *, models_module: str, base: str = "Base") -> Path:
    """Write ``alembic.ini`` and ``migrations/`` into ``root``; return the ``alembic.ini`` path.

    ``models_module`` is the importable module holding the declarative ``base`` class
    (``lab.models``); existing files are left alone so re-running never clobbers edits.
    """
    for part in (*models_module.split("."), base):
        if not part.isidentifier():
            raise ConfigurationError(f"{models_module}:{base} is not an importable Python name.")
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    env = Template(template_text("env.py.tmpl")).substitute(module=models_module, base=base)
    wanted = {
        root / "alembic.ini": template_text("alembic.ini"),
        root / "migrations" / "env.py": env,
        root / "migrations" / "script.py.mako": template_text("script.py.mako"),
    }
    for path, content in wanted.items():
        if not path.exists():
            path.write_text(content, encoding="utf-8")
    return root / "alembic.ini"
