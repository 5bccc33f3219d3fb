"""Slot math of the beat scheduler: slots come from the schedule alone, missed slots collapse into one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from jobs.beat.slots import ClockedSlots, CronSlots, IntervalSlots, slot_due, slot_next

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def test_interval_with_start_time_fires_at_start_then_every_n() -> None:
    slots = IntervalSlots(every=timedelta(seconds=10), anchor=T0, include_anchor=True)
    assert slot_next(slots, last=None, now=T0 - timedelta(seconds=5)) == T0
    assert slot_next(slots, last=T0, now=T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=10)


def test_interval_without_start_time_first_fires_one_interval_after_the_edit() -> None:
    slots = IntervalSlots(every=timedelta(seconds=10), anchor=T0, include_anchor=False)
    assert slot_due(slots, last=None, now=T0 + timedelta(seconds=9)) is None
    assert slot_next(slots, last=None, now=T0) == T0 + timedelta(seconds=10)


def test_missed_slots_collapse_into_the_latest_one() -> None:
    slots = IntervalSlots(every=timedelta(seconds=10), anchor=T0, include_anchor=True)
    now = T0 + timedelta(minutes=10, seconds=3)
    assert slot_due(slots, last=T0, now=now) == T0 + timedelta(minutes=10)
    # Once that one is fired nothing else is due until the next slot.
    assert slot_due(slots, last=T0 + timedelta(minutes=10), now=now) is None


@given(
    every=st.integers(min_value=1, max_value=3600),
    offset=st.integers(min_value=0, max_value=10**6),
    jitter=st.floats(min_value=0, max_value=0.999),
)
def test_two_beats_compute_the_same_slot_whatever_their_clock(every: int, offset: int, jitter: float) -> None:
    slots = IntervalSlots(every=timedelta(seconds=every), anchor=T0, include_anchor=True)
    now = T0 + timedelta(seconds=offset)
    later = now + timedelta(seconds=jitter * every)
    a, b = slot_due(slots, last=None, now=now), slot_due(slots, last=None, now=later)
    if a is not None and b is not None and later < a + timedelta(seconds=every):
        assert a == b
    assert a is not None
    assert (a - T0) % timedelta(seconds=every) == timedelta(0)


def test_cron_slots_in_a_time_zone_across_the_spring_dst_change() -> None:
    floor = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    slots = CronSlots(expression="0 * * * *", tz=BERLIN, floor=floor, floor_inclusive=False)
    # 02:00 local does not exist on 2026-03-29: 01:00 CET (00:00 UTC) is followed by 03:00 CEST (01:00 UTC).
    first = slots.first_after(datetime(2026, 3, 29, 0, 0, tzinfo=UTC))
    assert first == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert first.astimezone(BERLIN).hour == 3


def test_cron_latest_slot_includes_an_exact_slot_time() -> None:
    slots = CronSlots(expression="*/5 * * * *", tz=ZoneInfo("UTC"), floor=T0, floor_inclusive=True)
    assert slots.latest_at_or_before(T0 + timedelta(minutes=10)) == T0 + timedelta(minutes=10)
    assert slots.latest_at_or_before(T0 + timedelta(minutes=9, seconds=59)) == T0 + timedelta(minutes=5)
    assert slots.latest_at_or_before(T0 - timedelta(minutes=1)) is None


def test_cron_does_not_fire_a_slot_before_the_task_existed() -> None:
    created = T0 + timedelta(minutes=2)
    slots = CronSlots(expression="0 * * * *", tz=ZoneInfo("UTC"), floor=created, floor_inclusive=False)
    assert slot_due(slots, last=None, now=created + timedelta(seconds=1)) is None
    assert slot_next(slots, last=None, now=created) == T0 + timedelta(hours=1)


def test_clocked_fires_once() -> None:
    slots = ClockedSlots(at=T0)
    assert slot_next(slots, last=None, now=T0 - timedelta(seconds=1)) == T0
    assert slot_due(slots, last=None, now=T0 + timedelta(hours=1)) == T0
    assert slot_next(slots, last=T0, now=T0 + timedelta(seconds=1)) is None
