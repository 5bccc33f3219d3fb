"""Scheduler entries built from django-celery-beat PeriodicTask rows (read as plain values, not models)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .slots import ClockedSlots, CronSlots, IntervalSlots, Slots

logger = logging.getLogger(__name__)

# The columns one entry needs; read with .values() because model instances cost several times more.
ROW_FIELDS = (
    "id", "name", "task", "args", "kwargs", "queue", "exchange", "routing_key", "priority", "headers",
    "expires", "expire_seconds", "one_off", "start_time", "enabled", "last_run_at", "date_changed",
    "interval_id", "interval__every", "interval__period",
    "crontab_id", "crontab__minute", "crontab__hour", "crontab__day_of_month", "crontab__month_of_year",
    "crontab__day_of_week", "crontab__timezone",
    "clocked_id", "clocked__clocked_time",
)  # fmt: skip


@dataclass(slots=True, eq=False)
class BeatEntry:
    """One enabled PeriodicTask as the scheduler keeps it in memory."""

    pk: int
    name: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    headers: dict[str, Any]
    slots: Slots
    one_off: bool
    expires: datetime | None
    date_changed: datetime
    schedule_kind: str  # "interval", "crontab" or "clocked"
    schedule_id: int
    schedule_sig: tuple[Any, ...]  # the schedule row's values, to notice in-place edits of that row
    last_slot: datetime | None = None
    next_slot: datetime | None = field(default=None)


def schedule_signature(kind: str, row: dict[str, Any]) -> tuple[Any, ...]:
    """The values of the schedule row an entry uses, as read through the PeriodicTask row."""
    if kind == "interval":
        return (row["interval__every"], row["interval__period"])
    if kind == "crontab":
        return (
            row["crontab__minute"],
            row["crontab__hour"],
            row["crontab__day_of_month"],
            row["crontab__month_of_year"],
            row["crontab__day_of_week"],
            str(row["crontab__timezone"]),
        )
    return (row["clocked__clocked_time"],)


def _slots(kind: str, row: dict[str, Any]) -> Slots:
    start = row["start_time"]
    if kind == "interval":
        every = timedelta(**{row["interval__period"]: row["interval__every"]})
        if every <= timedelta(0):
            raise ValueError("interval must be positive")
        # Without a start time the grid starts at the last edit, like django-celery-beat's first run.
        return IntervalSlots(
            every=every, anchor=start or row["date_changed"], include_anchor=start is not None
        )
    if kind == "crontab":
        expr = " ".join(
            str(row[f"crontab__{part}"])
            for part in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        )
        tz = row["crontab__timezone"]
        tz = tz if isinstance(tz, ZoneInfo) else ZoneInfo(str(tz))
        return CronSlots(
            expression=expr, tz=tz, floor=start or row["date_changed"], floor_inclusive=start is not None
        )
    return ClockedSlots(at=row["clocked__clocked_time"])


def entry_from_row(row: dict[str, Any]) -> BeatEntry | None:
    """Build an entry from a PeriodicTask values() row; None (logged) when it cannot be scheduled."""
    kind = next((k for k in ("interval", "crontab", "clocked") if row[f"{k}_id"] is not None), None)
    if kind is None:
        logger.warning("beat: periodic task %r has no interval, crontab or clocked schedule", row["name"])
        return None
    try:
        slots = _slots(kind, row)
        args = json.loads(row["args"] or "[]")
        kwargs = json.loads(row["kwargs"] or "{}")
        headers = json.loads(row["headers"] or "{}")
    except (ValueError, TypeError, KeyError) as exc:
        logger.error("beat: cannot schedule periodic task %r: %r", row["name"], exc)
        return None
    options = {k: row[k] for k in ("queue", "exchange", "routing_key", "priority") if row[k] is not None}
    if row["expires"] or row["expire_seconds"]:
        options["expires"] = row["expires"] or row["expire_seconds"]
    return BeatEntry(
        pk=row["id"],
        name=row["name"],
        task=row["task"],
        args=args,
        kwargs=kwargs,
        options=options,
        headers=headers,
        slots=slots,
        one_off=row["one_off"],
        expires=row["expires"],
        date_changed=row["date_changed"],
        schedule_kind=kind,
        schedule_id=row[f"{kind}_id"],
        schedule_sig=schedule_signature(kind, row),
        last_slot=row["last_run_at"],
    )


def utc_iso(moment: datetime) -> str:
    """ISO-8601 in UTC, the format of the scheduled_for kwarg."""
    return moment.astimezone(UTC).isoformat()
