"""Date-partitioned tables: declare once on the model, keep partitions in step with time.

* :class:`DatePartitioned` + :class:`DatePartitioning` — the declaration on a model, checked at
  class definition;
* :class:`PartitionManager` — the maintenance run (``sigma-db partitions maintain``);
* :func:`copy_rows` — bulk ingest through PostgreSQL's COPY;
* :func:`create_partitions` and :func:`exclude_partitions` — the Alembic side;
* :mod:`sigma_db.partitions.windows` — the UTC window arithmetic and the partition names.

See ``docs/partitioning.md`` for the guide.
"""

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
from sigma_db.partitions.migration import create_partitions, exclude_partitions
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
    "exclude_partitions",
    "partition_name",
    "partitioned_table",
    "window_containing",
    "windows_covering",
]
