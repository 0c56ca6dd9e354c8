"""Alembic, the sigma_db way: numbered revisions, a checksummed ledger, lint, expand/contract.

A product's ``migrations/env.py`` calls :func:`run_migrations`; revision files use the helpers in
:mod:`sigma_db.migrations.ops`; ``sigma-db migrate`` (``--dry-run``), ``sigma-db migrations lock``
and ``sigma-db migrations repair`` drive it all from the product repository. See
``docs/migrations.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sigma_db.migrations.autogenerate import AutogenerateScope, unmanaged_relations
    from sigma_db.migrations.environment import (
        DEFAULT_LOCK_TIMEOUT,
        DEFAULT_STATEMENT_TIMEOUT,
        run_migrations,
    )
    from sigma_db.migrations.errors import MigrationError, one_line_errors
    from sigma_db.migrations.layout import write_layout
    from sigma_db.migrations.ops import (
        area,
        create_area_schema,
        create_index_concurrently,
        drop_index_concurrently,
        lint_ignore,
        run_in_batches,
    )
    from sigma_db.migrations.revisions import Phase

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_STATEMENT_TIMEOUT",
    "AutogenerateScope",
    "MigrationError",
    "Phase",
    "area",
    "create_area_schema",
    "create_index_concurrently",
    "drop_index_concurrently",
    "lint_ignore",
    "one_line_errors",
    "run_in_batches",
    "run_migrations",
    "unmanaged_relations",
    "write_layout",
]

_HOME = {
    "AutogenerateScope": "autogenerate",
    "unmanaged_relations": "autogenerate",
    "DEFAULT_LOCK_TIMEOUT": "environment",
    "DEFAULT_STATEMENT_TIMEOUT": "environment",
    "run_migrations": "environment",
    "MigrationError": "errors",
    "one_line_errors": "errors",
    "write_layout": "layout",
    "area": "ops",
    "create_area_schema": "ops",
    "create_index_concurrently": "ops",
    "drop_index_concurrently": "ops",
    "lint_ignore": "ops",
    "run_in_batches": "ops",
    "Phase": "revisions",
}


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): the sigma-db CLI imports this package, and must not pay for Alembic
    # unless a migration verb runs.
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'sigma_db.migrations' has no attribute {name!r}")
    value = getattr(import_module(f"sigma_db.migrations.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
