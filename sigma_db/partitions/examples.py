"""The two documented example models: ``signals`` (daily) and ``audit_logs`` (monthly).

They are tested like any product model, and the product template copies them. In a product,
use the product's own ``Base`` instead of :class:`ExampleBase`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import TIMESTAMP, Double, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sigma_db.models import IdentityPrimaryKey, ProductBase
from sigma_db.partitions.declaration import DatePartitioned, DatePartitioning

__all__ = ["AuditLog", "ExampleBase", "Signal"]


class ExampleBase(ProductBase, DeclarativeBase):
    """The examples' own declarative base (own MetaData, the naming convention)."""


class Signal(DatePartitioned, IdentityPrimaryKey, ExampleBase):
    """One observation of a signal: high volume, queried by day, kept 400 days in prod.

    Daily partitions because queries and retention both work in days; the key is
    ``(id, observed_at)`` because a partitioned table's key must include the partition column.
    """

    __partitioning__ = DatePartitioning(
        column="observed_at",
        interval="day",
        premake=7,
        retention={
            "dev": timedelta(days=7),
            "staging": timedelta(days=30),
            "prod": timedelta(days=400),
        },
        expired="drop",
    )
    __table_args__ = (Index(None, "symbol", "observed_at"),)

    observed_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    """When the signal was observed (UTC instant): the partition key."""
    symbol: Mapped[str] = mapped_column(String(32))
    """The instrument, e.g. ``AAPL``."""
    value: Mapped[float] = mapped_column(Double)
    """The signal's value."""


class AuditLog(DatePartitioned, IdentityPrimaryKey, ExampleBase):
    """Who did what, when: lower volume, kept for years, archived rather than dropped.

    Monthly partitions keep the partition count low over a long retention; ``expired="detach"``
    leaves expired months as plain tables to archive (then drop) outside the database's hot
    path.
    """

    __partitioning__ = DatePartitioning(
        column="occurred_at",
        interval="month",
        premake=3,
        retention={
            "dev": timedelta(days=62),
            "staging": timedelta(days=366),
            "prod": timedelta(days=7 * 366),
        },
        expired="detach",
    )
    __table_args__ = (Index(None, "actor", "occurred_at"),)

    occurred_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), primary_key=True)
    """When it happened (UTC instant): the partition key."""
    actor: Mapped[str] = mapped_column(String(200))
    """Who did it: a user id, a service name."""
    action: Mapped[str] = mapped_column(Text)
    """What was done, e.g. ``pack.publish``."""
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    """Free-form context of the action."""
