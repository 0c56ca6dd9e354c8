"""Alembic, the sigma_db way: numbered revisions, a checksummed ledger, lint, expand/contract.

A product's ``migrations/env.py`` calls :func:`run_migrations`; revision files use the helpers in
:mod:`sigma_db.migrations.ops`; ``sigma-db migrate`` (``--dry-run``), ``sigma-db migrations lock``
and ``sigma-db migrations repair`` drive it all from the product repository. See
``docs/migrations.md``.
"""

from __future__ import annotations

from sigma_db.migrations.autogenerate import AutogenerateScope, unmanaged_relations
from sigma_db.migrations.environment import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_STATEMENT_TIMEOUT,
    run_migrations,
)
from sigma_db.migrations.errors import MigrationError
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
    "run_in_batches",
    "run_migrations",
    "unmanaged_relations",
    "write_layout",
]
