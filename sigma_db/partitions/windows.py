"""Partition windows: which UTC range holds an instant, and what the partition for it is called.

Pure arithmetic, no database: the maintenance run, the migration helper and ``create_all`` all
ask this module the same two questions, so they can never disagree about a boundary or a name.

Every boundary is midnight UTC. A day window is ``[d, d+1 day)``; a week window starts on the
ISO Monday; a month window on the 1st. Windows of one interval tile time: each instant lies in
exactly one, and the end of one is the start of the next.

Partition names (stable and documented; they appear in every product database):

=========  =====================  =============================================
interval   name                   example
=========  =====================  =============================================
day        ``<table>_pYYYYMMDD``  ``signals_p20261127``
week       ``<table>_pGGGGwVV``   ``signals_p2026w48`` (ISO year and ISO week)
month      ``<table>_pYYYYMM``    ``audit_logs_p202611``
default    ``<table>_default``    ``signals_default``
=========  =====================  =============================================

A name longer than 63 bytes goes through :func:`sigma_db.naming.shorten`, the frozen rule for
every generated name. Names are for people; the maintenance run recognises a partition by its
bounds, read from the catalog, never by parsing its name.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sigma_db.errors import ConfigurationError
from sigma_db.naming import shorten

__all__ = [
    "Interval",
    "PartitionWindow",
    "default_partition_name",
    "partition_name",
    "window_containing",
    "windows_covering",
]


class Interval(enum.StrEnum):
    """How much time one partition holds."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"

    @property
    def longest(self) -> timedelta:
        """The longest a window of this interval can be (a month may have 31 days)."""
        return {Interval.DAY: timedelta(days=1), Interval.WEEK: timedelta(days=7)}.get(
            self, timedelta(days=31)
        )


@dataclass(frozen=True, order=True)
class PartitionWindow:
    """One partition's range ``[start, end)``, both midnight UTC."""

    start: datetime
    end: datetime
    interval: Interval

    @property
    def suffix(self) -> str:
        """The part of the partition name after ``<table>_``: ``p20261127``, ``p2026w48``...

        Years have four digits (``p00050601``): ``strftime``'s ``%Y`` does not pad on glibc.
        """
        if self.interval is Interval.DAY:
            return f"p{self.start.year:04d}{self.start:%m%d}"
        if self.interval is Interval.WEEK:
            iso = self.start.isocalendar()
            return f"p{iso.year:04d}w{iso.week:02d}"
        return f"p{self.start.year:04d}{self.start:%m}"

    def contains(self, instant: datetime | date) -> bool:
        """Whether ``instant`` (an aware datetime, or a date) lies in ``[start, end)``."""
        moment = as_utc(instant)
        return self.start <= moment < self.end

    def next(self) -> PartitionWindow:
        """The window right after this one."""
        return window_containing(self.interval, self.end)

    def previous(self) -> PartitionWindow:
        """The window right before this one."""
        return window_containing(self.interval, self.start - timedelta(microseconds=1))


def as_utc(instant: datetime | date) -> datetime:
    """An aware datetime in UTC; a date means its midnight UTC. Naive datetimes are refused.

    A naive datetime has no instant: reading it as local time or as UTC would each be right on
    some machines and silently wrong on others.
    """
    if isinstance(instant, datetime):
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ConfigurationError(
                f"datetime {instant.isoformat()} has no time zone; partition boundaries are UTC, "
                "so pass an aware datetime, e.g. datetime.now(UTC) or dt.replace(tzinfo=UTC)."
            )
        return instant.astimezone(UTC)
    return datetime.combine(instant, time(), tzinfo=UTC)


def window_containing(interval: Interval, instant: datetime | date) -> PartitionWindow:
    """The one window of ``interval`` that holds ``instant``."""
    moment = as_utc(instant)
    day = moment.date()
    if interval is Interval.DAY:
        first = day
        after = first + timedelta(days=1)
    elif interval is Interval.WEEK:
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return PartitionWindow(_midnight(first), _midnight(after), interval)


def windows_covering(
    interval: Interval, first: datetime | date, last: datetime | date
) -> Iterator[PartitionWindow]:
    """Every window from the one holding ``first`` to the one holding ``last``, in order."""
    window = window_containing(interval, first)
    stop = as_utc(last)
    while window.start <= stop:
        yield window
        window = window.next()


def partition_name(table: str, window: PartitionWindow) -> str:
    """The child partition's name: ``<table>_<suffix>``, shortened by the frozen rule if long."""
    return shorten(f"{table}_{window.suffix}")


def default_partition_name(table: str) -> str:
    """The DEFAULT partition's name: ``<table>_default``, shortened by the frozen rule if long."""
    return shorten(f"{table}_default")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)
