"""Slot math: every slot is derived from the schedule alone, so two beats compute identical slot times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from jobs.schedules import cron_next, cron_previous


@dataclass(frozen=True)
class IntervalSlots:
    """Slots at anchor + k * every; k starts at 0 when the anchor is a start time, else at 1."""

    every: timedelta
    anchor: datetime
    include_anchor: bool

    def _first_k(self) -> int:
        return 0 if self.include_anchor else 1

    def latest_at_or_before(self, at: datetime) -> datetime | None:
        k = (at - self.anchor) // self.every
        if k < self._first_k():
            return None
        return self.anchor + k * self.every

    def first_after(self, after: datetime) -> datetime:
        k = max((after - self.anchor) // self.every + 1, self._first_k())
        return self.anchor + k * self.every


@dataclass(frozen=True)
class CronSlots:
    """Five-field cron slots in a time zone, later than `floor` (or from `start` on, when given).

    The wall-time and DST rules are the jobs core's (jobs.schedules), so beat fires the slots the
    admin shows as next runs.
    """

    expression: str
    tz: ZoneInfo
    floor: datetime
    floor_inclusive: bool

    def _ok(self, slot: datetime) -> bool:
        return slot >= self.floor if self.floor_inclusive else slot > self.floor

    def latest_at_or_before(self, at: datetime) -> datetime | None:
        slot = cron_previous(self.expression, self.tz.key, at)
        return slot if slot is not None and self._ok(slot) else None

    def first_after(self, after: datetime) -> datetime | None:
        if after < self.floor:
            after = self.floor - timedelta(microseconds=1) if self.floor_inclusive else self.floor
        return cron_next(self.expression, self.tz.key, after)


@dataclass(frozen=True)
class ClockedSlots:
    """One slot at a fixed moment."""

    at: datetime

    def latest_at_or_before(self, at: datetime) -> datetime | None:
        return self.at if self.at <= at else None

    def first_after(self, after: datetime) -> datetime | None:
        return self.at if self.at > after else None


Slots = IntervalSlots | CronSlots | ClockedSlots


def slot_due(slots: Slots, *, last: datetime | None, now: datetime) -> datetime | None:
    """The latest slot at or before now that was not fired yet (missed slots collapse into one), if any."""
    latest = slots.latest_at_or_before(now)
    if latest is None or (last is not None and latest <= last):
        return None
    return latest


def slot_next(slots: Slots, *, last: datetime | None, now: datetime) -> datetime | None:
    """The slot to fire next: a missed one (due now) or the first one after now."""
    due = slot_due(slots, last=last, now=now)
    if due is not None:
        return due
    return slots.first_after(max(now, last) if last else now)
