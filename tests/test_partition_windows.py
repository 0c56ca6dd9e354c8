"""UTC window arithmetic: every instant in exactly one window, windows tile, names are stable."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma_db import ConfigurationError
from sigma_db.partitions.ddl import bound_literal
from sigma_db.partitions.windows import (
    Interval,
    default_partition_name,
    partition_name,
    window_containing,
    windows_covering,
)

intervals = st.sampled_from(list(Interval))
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)), timezone(timedelta(0))]
    + [timezone(timedelta(minutes=m)) for m in (-570, 330, 345)]
)
instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2199, 12, 30), timezones=zones
)
FAST = settings(max_examples=300, deadline=None)


@FAST
@given(interval=intervals, instant=instants)
def test_every_instant_lies_in_exactly_its_window(interval: Interval, instant: datetime) -> None:
    window = window_containing(interval, instant)
    assert window.contains(instant)
    assert window.start <= instant < window.end
    assert not window.previous().contains(instant)
    assert not window.next().contains(instant)
    # boundaries are midnight UTC
    for edge in (window.start, window.end):
        assert edge.tzinfo is UTC
        assert (edge.hour, edge.minute, edge.second, edge.microsecond) == (0, 0, 0, 0)
    # the window of its own start is itself; its end belongs to the next window
    assert window_containing(interval, window.start) == window
    assert window_containing(interval, window.end) == window.next()
    assert window_containing(interval, window.end - timedelta(microseconds=1)) == window


@FAST
@given(interval=intervals, instant=instants)
def test_window_shape(interval: Interval, instant: datetime) -> None:
    window = window_containing(interval, instant)
    length = window.end - window.start
    if interval is Interval.DAY:
        assert length == timedelta(days=1)
    elif interval is Interval.WEEK:
        assert length == timedelta(days=7)
        assert window.start.weekday() == 0  # ISO weeks start on Monday
    else:
        assert window.start.day == 1
        assert 28 <= length.days <= 31
    assert length <= interval.longest


@FAST
@given(interval=intervals, first=instants, span=st.integers(min_value=0, max_value=400))
def test_windows_tile_without_gaps_or_overlaps(
    interval: Interval, first: datetime, span: int
) -> None:
    last = first + timedelta(days=span)
    windows = list(windows_covering(interval, first, last))
    assert windows[0].contains(first)
    assert windows[-1].contains(last)
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    names = [partition_name("signals", w) for w in windows]
    assert len(set(names)) == len(names)  # one name per window
    assert names == sorted(names)  # names sort in time order


@pytest.mark.parametrize(
    ("year", "days"), [(2024, 29), (2023, 28), (2000, 29), (1900, 28), (2100, 28)]
)
def test_february_follows_leap_years(year: int, days: int) -> None:
    window = window_containing(Interval.MONTH, datetime(year, 2, 10, tzinfo=UTC))
    assert (window.end - window.start).days == days
    assert window.suffix == f"p{year}02"


def test_leap_day_has_its_own_daily_partition() -> None:
    window = window_containing(Interval.DAY, date(2028, 2, 29))
    assert window.suffix == "p20280229"
    assert window.next().suffix == "p20280301"


def test_year_end_and_iso_week_names() -> None:
    eve = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert window_containing(Interval.DAY, eve).suffix == "p20261231"
    assert window_containing(Interval.DAY, eve).next().suffix == "p20270101"
    assert window_containing(Interval.MONTH, eve).next().suffix == "p202701"
    # 2024-12-30 is the Monday of ISO week 1 of 2025: the name uses the ISO year.
    assert window_containing(Interval.WEEK, date(2024, 12, 31)).suffix == "p2025w01"
    assert window_containing(Interval.WEEK, date(2026, 11, 27)).suffix == "p2026w48"
    # 2020 has an ISO week 53
    assert window_containing(Interval.WEEK, date(2021, 1, 2)).suffix == "p2020w53"


def test_boundaries_are_utc_not_local() -> None:
    # 23:30 on Nov 26 in New York (UTC-5) is 04:30 UTC on Nov 27.
    local = datetime(2026, 11, 26, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert window_containing(Interval.DAY, local).suffix == "p20261127"


def test_naive_datetimes_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"no time zone.*datetime\.now\(UTC\)"):
        window_containing(Interval.DAY, datetime(2026, 11, 27))


def test_documented_partition_names() -> None:
    day = window_containing(Interval.DAY, date(2026, 11, 27))
    assert partition_name("signals", day) == "signals_p20261127"
    assert partition_name("audit_logs", window_containing(Interval.MONTH, day.start)) == (
        "audit_logs_p202611"
    )
    assert default_partition_name("signals") == "signals_default"


def test_long_names_are_shortened_by_the_frozen_rule() -> None:
    table = "t" * 60
    day = window_containing(Interval.DAY, date(2026, 11, 27))
    name = partition_name(table, day)
    assert len(name.encode()) <= 63
    assert name != partition_name(table, day.next())  # the hash keeps windows apart
    assert len(default_partition_name(table).encode()) <= 63


@pytest.mark.parametrize(
    ("interval", "suffix"),
    [(Interval.DAY, "p00050601"), (Interval.WEEK, "p0005w22"), (Interval.MONTH, "p000506")],
)
def test_years_before_1000_are_zero_padded_in_names_and_bounds(
    interval: Interval, suffix: str
) -> None:
    # strftime's %Y does not pad on glibc: year 5 gave 'p50601' and the bound '5-06-01 ...',
    # which PostgreSQL reads as another date.
    window = window_containing(interval, datetime(5, 6, 1, 12, tzinfo=UTC))
    assert window.suffix == suffix
    assert bound_literal(datetime(5, 6, 1, tzinfo=UTC), key_is_date=False) == (
        "'0005-06-01 00:00:00+00'"
    )
    assert bound_literal(datetime(5, 6, 1, tzinfo=UTC), key_is_date=True) == "'0005-06-01'"
