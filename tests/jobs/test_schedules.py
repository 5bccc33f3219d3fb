"""Schedule math: cron in a zone across DST (Hypothesis), intervals, the slot a stock firing serves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.schedules import ScheduleSpec, cron_next, cron_previous, spec_next_run

BERLIN = ZoneInfo("Europe/Berlin")
# Transitions in Europe/Berlin: 2027-03-28 02:00 -> 03:00 (spring), 2027-10-31 03:00 -> 02:00 (fall).
SPRING = datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
FALL = datetime(2027, 10, 31, 1, 0, tzinfo=UTC)

minutes = st.sampled_from(["0", "30", "15", "*/20", "5,45", "*"])
hours = st.sampled_from(["*", "1", "2", "3", "2,3", "1-4", "*/2"])


def _expected(expression: str, start: datetime, end: datetime) -> list[datetime]:
    """Brute force over every UTC minute: the first occurrence of each matching wall time, or the
    gap-shifted instant of a wall time that does not exist."""
    found: set[datetime] = set()
    t = start.replace(second=0, microsecond=0)
    while t <= end:
        local = t.astimezone(BERLIN)
        naive = local.replace(tzinfo=None)
        if croniter.match(expression, naive) and local.fold == 0:
            found.add(t)
        t += timedelta(minutes=1)
    # Wall times inside the spring gap (02:00-02:59) never occur: they run shifted forward by an hour.
    day = datetime(2027, 3, 28)
    for minute in range(60):
        naive = day.replace(hour=2, minute=minute)
        if croniter.match(expression, naive):
            shifted = naive.replace(tzinfo=BERLIN).astimezone(UTC)
            if start < shifted <= end:
                found.add(shifted)
    return sorted(found)


def _run(expression: str, start: datetime, end: datetime) -> list[datetime]:
    runs: list[datetime] = []
    after = start
    while True:
        nxt = cron_next(expression, "Europe/Berlin", after)
        assert nxt is not None
        if nxt > end:
            return runs
        runs.append(nxt)
        after = nxt


@settings(max_examples=30, deadline=None)
@given(minute=minutes, hour=hours, transition=st.sampled_from([SPRING, FALL]))
def test_cron_next_runs_across_dst_in_berlin(minute, hour, transition):
    expression = f"{minute} {hour} * * *"
    start, end = transition - timedelta(hours=5), transition + timedelta(hours=5)
    runs = _run(expression, start, end)
    assert runs == sorted(set(runs))  # strictly increasing, no duplicates
    assert runs == [r for r in _expected(expression, start, end) if r > start]


@settings(max_examples=30, deadline=None)
@given(minute=minutes, hour=hours, transition=st.sampled_from([SPRING, FALL]), offset=st.integers(0, 600))
def test_cron_previous_is_the_inverse_of_next(minute, hour, transition, offset):
    expression = f"{minute} {hour} * * *"
    at = transition - timedelta(hours=5) + timedelta(minutes=offset)
    previous = cron_previous(expression, "Europe/Berlin", at)
    assert previous is not None
    assert previous <= at
    assert cron_next(expression, "Europe/Berlin", previous) > at


def test_daily_job_at_0230_runs_once_on_both_dst_days():
    spring = _run("30 2 * * *", SPRING - timedelta(hours=12), SPRING + timedelta(hours=12))
    assert [r.astimezone(BERLIN).strftime("%H:%M %Z") for r in spring] == ["03:30 CEST"]
    fall = _run("30 2 * * *", FALL - timedelta(hours=12), FALL + timedelta(hours=12))
    assert [r.astimezone(BERLIN).strftime("%H:%M %Z") for r in fall] == ["02:30 CEST"]  # first occurrence


def test_cron_is_computed_in_its_zone():
    after = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
    assert cron_next("0 9 * * *", "America/New_York", after) == datetime(2027, 1, 10, 14, 0, tzinfo=UTC)
    assert cron_next("0 9 * * *", "UTC", after) == datetime(2027, 1, 11, 9, 0, tzinfo=UTC)


def test_interval_slots_are_anchored():
    anchor = datetime(2027, 1, 1, tzinfo=UTC)
    spec = ScheduleSpec(type="interval", every_seconds=10)
    assert spec_next_run(spec, after=anchor + timedelta(seconds=25), anchor=anchor) == anchor + timedelta(
        seconds=30
    )
    assert spec_next_run(spec, after=anchor - timedelta(days=1), anchor=anchor) == anchor


def test_end_at_and_start_at_bound_the_runs():
    anchor = datetime(2027, 1, 1, tzinfo=UTC)
    spec = ScheduleSpec(type="interval", every_seconds=60, end_at=anchor + timedelta(seconds=90))
    assert spec_next_run(spec, after=anchor + timedelta(seconds=61), anchor=anchor) is None
    cron = ScheduleSpec(type="cron", cron_expression="0 * * * *", start_at=datetime(2027, 5, 1, tzinfo=UTC))
    assert spec_next_run(cron, after=anchor, anchor=anchor) == datetime(2027, 5, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_next_run_at_is_stored_and_follows_the_clock():
    from jobs.services import job_create
    from tests.factories import UserFactory

    with time_machine.travel(datetime(2027, 3, 27, 12, 0, tzinfo=UTC), tick=False):
        job = job_create(
            owner=UserFactory(),
            name="n",
            kind="python",
            payload={"handler": "echo"},
            schedule={"type": "cron", "cron_expression": "30 2 * * *", "timezone": "Europe/Berlin"},
        )
        assert job.schedule.next_run_at == datetime(2027, 3, 28, 1, 30, tzinfo=UTC)  # 03:30 CEST


@pytest.mark.django_db
def test_once_in_the_past_is_refused_by_the_clock():
    from django.core.exceptions import ValidationError

    from jobs.services import job_create
    from tests.factories import UserFactory

    with time_machine.travel(datetime(2030, 1, 1, tzinfo=UTC), tick=False), pytest.raises(ValidationError):
        job_create(
            owner=UserFactory(),
            name="n",
            kind="python",
            payload={"handler": "echo"},
            schedule={"type": "once", "run_at": "2029-12-31T23:59:00Z"},
        )
