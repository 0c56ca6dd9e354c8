"""The migration files of a product repository, written from the templates shipped here.

::

    alembic.ini                  script_location = migrations, numbered file names
    migrations/env.py            a few lines: the product's metadata → run_migrations()
    migrations/script.py.mako    revision template (phase, timeout overrides)
    migrations/versions/         0001_init.py, 0002_....py
    migrations/checksums.lock    written by `sigma-db migrations lock`

The new-product scaffold and the tests both build repositories with :func:`write_layout`, so the
templates are exercised end to end.

A product repository also gets a post-write hook (``format_revisions=True``): Alembic runs
:mod:`sigma_db.migrations.revision_format` on each new revision, so it is lint- and
format-clean before ``sigma-db migrations lock`` checksums it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from sigma_db.errors import ConfigurationError
from sigma_db.topology import Product, Topology

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "FORMAT_HOOK",
    "PRODUCT_OPTION",
    "TEMPLATE_FILES",
    "product_mismatch",
    "template_text",
    "write_layout",
]

PRODUCT_OPTION = "sigma_db_product"
"""The ``alembic.ini`` option naming whose migrations these are (``lab``)."""

TEMPLATE_FILES = ("alembic.ini", "env.py.tmpl", "script.py.mako")
"""Package data under ``sigma_db/migrations/template/``."""


def template_text(name: str) -> str:
    """The text of one shipped template file."""
    if name not in TEMPLATE_FILES:
        raise ConfigurationError(f"no migration template {name!r}; use one of {TEMPLATE_FILES}.")
    return (files("sigma_db.migrations") / "template" / name).read_text(encoding="utf-8")


FORMAT_HOOK = """\
# A new revision is lint- and format-clean when it is written, before `sigma-db migrations lock`
# checksums it: ruff's fixes and formatter run on that one file, with pyproject.toml's settings.
# (Locked revisions are never reformatted: pyproject.toml keeps them out of `ruff format`.)
# Where ruff is not installed the file stays as rendered, and a note says what to run.
[post_write_hooks]
hooks = ruff
ruff.type = module
ruff.module = sigma_db.migrations.revision_format
ruff.options = REVISION_SCRIPT_FILENAME

"""
"""The ``alembic.ini`` section :func:`write_layout` adds with ``format_revisions=True``."""


def write_layout(
    root: Path,
    *,
    models_module: str,
    base: str = "Base",
    format_revisions: bool = False,
    product: str | None = None,
) -> Path:
    """Write ``alembic.ini`` and ``migrations/`` into ``root``; return the ``alembic.ini`` path.

    ``models_module`` is the importable module holding the declarative ``base`` class
    (``lab.models``); existing files are left alone so re-running never clobbers edits.
    ``format_revisions`` adds :data:`FORMAT_HOOK` to ``alembic.ini``: new revisions get ruff's
    fixes and formatting (for a repository whose ``pyproject.toml`` configures ruff).
    ``product`` declares whose migrations these are (:data:`PRODUCT_OPTION`): a run whose
    ``DB_*`` settings resolve to another product is refused (:func:`product_mismatch`).
    """
    for part in (*models_module.split("."), base):
        if not part.isidentifier():
            raise ConfigurationError(f"{models_module}:{base} is not an importable Python name.")
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    env = Template(template_text("env.py.tmpl")).substitute(module=models_module, base=base)
    ini = template_text("alembic.ini")
    if product is not None:
        Product.named(product)  # a key no product may have is refused here, not at migrate
        declared = (
            "# Whose migrations these are: a run whose DB_* settings resolve to another product\n"
            f"# is refused.\n{PRODUCT_OPTION} = {product}\n"
        )
        ini = ini.replace("\n[alembic]\n", f"\n[alembic]\n{declared}", 1)
    if format_revisions:
        ini = ini.replace("\n[loggers]\n", f"\n{FORMAT_HOOK}[loggers]\n", 1)
    wanted = {
        root / "alembic.ini": ini,
        root / "migrations" / "env.py": env,
        root / "migrations" / "script.py.mako": template_text("script.py.mako"),
    }
    for path, content in wanted.items():
        if not path.exists():
            path.write_text(content, encoding="utf-8")
    return root / "alembic.ini"


def product_mismatch(config: Config, topology: Topology) -> str | None:
    """Why ``topology`` is not the product ``alembic.ini`` declares, or None when it is.

    In the consolidated dev database a copied ``eval "$(sigma-db dev env sim ...)"`` would apply
    Lab's revisions into Sim's schema without a word; a repository without the option (one
    generated before it existed) is not checked.
    """
    declared = config.get_main_option(PRODUCT_OPTION)
    if not declared or declared == topology.product.key:
        return None
    where = Path(config.config_file_name or "alembic.ini").name
    try:
        product = Product.named(declared)
    except ConfigurationError as exc:
        return f"{where}: {PRODUCT_OPTION} = {declared}: {exc}"
    return (
        f"DB_* resolve to {topology.product.title} (database {topology.database}, schema "
        f"{topology.schema}), but these are {product.title}'s migrations ({where}: "
        f"{PRODUCT_OPTION} = {declared}); use {product.title}'s settings (in dev: eval "
        f'"$(sigma-db dev env {declared} --role migrator)")'
    )
