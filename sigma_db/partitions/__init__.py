"""Date-partitioned tables: declare once on the model, keep partitions in step with time.

* :class:`DatePartitioned` + :class:`DatePartitioning` — the declaration on a model, checked at
  class definition;
* :class:`PartitionManager` — the maintenance run (``sigma-db partitions maintain``);
* :func:`copy_rows` — bulk ingest through PostgreSQL's COPY;
* :func:`create_partitions` — the initial partitions, in the revision that creates the parent
  (the migrations env keeps autogenerate off the partitions);
* :mod:`sigma_db.partitions.windows` — the UTC window arithmetic and the partition names.

See ``docs/partitioning.md`` for the guide.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sigma_db.partitions.declaration import (
        DEFAULT_PREMAKE,
        DEFAULT_RETENTION,
        DatePartitioned,
        DatePartitioning,
        PartitionedTable,
        partitioned_table,
    )
    from sigma_db.partitions.ingest import copy_rows
    from sigma_db.partitions.manager import (
        MaintenancePlan,
        MaintenanceReport,
        PartitionAction,
        PartitionManager,
        TablePlan,
    )
    from sigma_db.partitions.migration import create_partitions
    from sigma_db.partitions.windows import (
        Interval,
        PartitionWindow,
        default_partition_name,
        partition_name,
        window_containing,
        windows_covering,
    )

__all__ = [
    "DEFAULT_PREMAKE",
    "DEFAULT_RETENTION",
    "DatePartitioned",
    "DatePartitioning",
    "Interval",
    "MaintenancePlan",
    "MaintenanceReport",
    "PartitionAction",
    "PartitionManager",
    "PartitionWindow",
    "PartitionedTable",
    "TablePlan",
    "copy_rows",
    "create_partitions",
    "default_partition_name",
    "partition_name",
    "partitioned_table",
    "window_containing",
    "windows_covering",
]

_HOME = {
    "DEFAULT_PREMAKE": "declaration",
    "DEFAULT_RETENTION": "declaration",
    "DatePartitioned": "declaration",
    "DatePartitioning": "declaration",
    "PartitionedTable": "declaration",
    "partitioned_table": "declaration",
    "copy_rows": "ingest",
    "MaintenancePlan": "manager",
    "MaintenanceReport": "manager",
    "PartitionAction": "manager",
    "PartitionManager": "manager",
    "TablePlan": "manager",
    "create_partitions": "migration",
    "Interval": "windows",
    "PartitionWindow": "windows",
    "default_partition_name": "windows",
    "partition_name": "windows",
    "window_containing": "windows",
    "windows_covering": "windows",
}


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562) so that `sigma-db --help` and `import sigma_db.partitions.cli` stay cheap.
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'sigma_db.partitions' has no attribute {name!r}")
    value = getattr(import_module(f"sigma_db.partitions.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
