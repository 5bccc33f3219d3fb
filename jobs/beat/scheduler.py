"""JobScheduler: a celery beat scheduler over django-celery-beat's models whose cost per firing is flat.

Due entries come from a heap keyed on their next slot. Job firings (task `jobs.fire`) are not sent as
tasks: the leader collects the slots due in a tick and fires them in-process in batches
(`jobs.services.firing.slots_fire`: one INSERT for the batch, placement, `jobs.execute` published after
commit), so a run costs one broker message. Other entries (the sweeps) are sent as tasks. Edits reload only
the rows that changed
(PeriodicTask.date_changed, with PeriodicTasks.last_update as the cheap "something changed" signal),
and run bookkeeping (last_run_at, total_run_count) is written in one statement every few seconds.
Only the holder of the Redis leader lease fires; the unique (job, scheduled_for, attempt) constraint on
Execution is the guarantee behind the lease, so every beat derives slot times from the schedule alone.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.beat import Scheduler
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.utils import DatabaseError, InterfaceError
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)
from django_celery_beat.schedulers import ModelEntry

from ..services.firing import Slot, slots_fire
from .entries import ROW_FIELDS, BeatEntry, entry_from_row, utc_iso
from .lease import LEASE_KEY, LeaderLease, lease_seconds, redis_client
from .slots import slot_next

logger = logging.getLogger(__name__)

# The database is away or the connection is gone: the tick carries on and the next one tries again.
DB_ERRORS = (DatabaseError, InterfaceError)
# Entries of this task are job firings: fired in-process, in batches, instead of sent as tasks.
FIRE_TASK = "jobs.fire"
FIRE_BATCH_MAX = 500  # slots per firing transaction (a burst of 10,000 is 20 short transactions)
# Tasks that receive the slot as the "scheduled_for" kwarg (contract.md); every task gets it as a header.
SLOT_KWARG_TASKS = frozenset({FIRE_TASK})
_SCHEDULE_MODELS = {"interval": IntervalSchedule, "crontab": CrontabSchedule, "clocked": ClockedSchedule}
_SIG_FIELDS = {
    "interval": ("every", "period"),
    "crontab": ("minute", "hour", "day_of_month", "month_of_year", "day_of_week", "timezone"),
    "clocked": ("clocked_time",),
}


def _knob(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobScheduler(Scheduler):
    """Heap-driven, leader-elected beat scheduler for django-celery-beat PeriodicTask rows."""

    max_interval = 5
    lease_key = LEASE_KEY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stats: Counter[str] = Counter()
        # Bookkeeping not written yet outlives a change of leader: it is written when the database answers.
        self._pending: dict[int, tuple[datetime, int]] = {}  # pk -> (last slot fired, firings) to write
        self._disable: dict[int, datetime] = {}  # pk -> date_changed seen when we retired it
        self.lease = LeaderLease(client=redis_client(), seconds=lease_seconds(), key=self.lease_key)
        self.sync_seconds = _knob("SCHEDULER_BEAT_SYNC_SECONDS", 1.0)
        self.flush_seconds = _knob("SCHEDULER_BEAT_FLUSH_SECONDS", 2.0)
        self.full_sync_seconds = _knob("SCHEDULER_BEAT_FULL_SYNC_SECONDS", 300.0)
        self.change_margin = timedelta(seconds=_knob("SCHEDULER_BEAT_CHANGE_MARGIN_SECONDS", 10.0))
        self._reset_state()
        super().__init__(*args, **kwargs)
        # Ticks renew the lease, so they must come well inside it.
        self.max_interval = min(float(self.max_interval or 5), max(self.lease.seconds / 3, 0.1))  # type: ignore[assignment]

    def _reset_state(self) -> None:
        self._leading = False
        self._entries: dict[int, BeatEntry] = {}
        self._due: list[tuple[float, int, BeatEntry]] = []
        self._seq = itertools.count()
        self._known_changed: dict[int, datetime] = {}  # date_changed of every row seen, enabled or not
        self._enabled_ids: set[int] = set()
        self._watermark = datetime.min.replace(tzinfo=UTC)
        self._last_change: datetime | None = None
        self._fingerprints: dict[str, str] = {}
        self._next_sync = self._next_flush = self._next_full = 0.0

    # --- celery beat hooks --------------------------------------------------------------------
    def setup_schedule(self) -> None:
        """Nothing to set up eagerly: the leader loads the schedule (and static entries) when elected."""

    def should_sync(self) -> bool:
        return False  # tick() flushes bookkeeping itself, in batches

    def sync(self) -> None:
        if self._pending or self._disable:
            try:
                close_old_connections()
                self._flush()
            except DB_ERRORS as exc:
                _connection_drop()
                logger.warning("beat: could not write run bookkeeping, retrying later: %s", _oneline(exc))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lease.release()

    @property
    def info(self) -> str:
        return f"    . leader lease -> {self.lease.seconds:g}s in Redis key {self.lease.key}"

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Renew or seek the lease; as leader, sync changes, fire what is due and flush bookkeeping."""
        if not self.lease.hold():
            if self._leading:
                self._step_down()
            else:
                self.sync()  # what a former leadership could not write yet
            return min(1.0, self.lease.seconds / 5)
        close_old_connections()
        try:
            if not self._leading:
                self._become_leader()
            now_m = time.monotonic()
            if now_m >= self._next_flush or self._disable:
                self._next_flush = now_m + self.flush_seconds
                self._flush()
            if now_m >= self._next_sync:
                self._next_sync = now_m + self.sync_seconds
                self._sync_changes(now_m)
        except DB_ERRORS as exc:
            # The database is away: keep firing what we know (on a fresh connection: the broken one is
            # dropped now, not at the next tick); what did not get done is done again on the next tick.
            _connection_drop()
            logger.warning("beat: database error, retrying next tick: %s", _oneline(exc))
        if not self._leading:
            return 1.0
        return self._fire_due()

    # --- leadership ---------------------------------------------------------------------------
    def _become_leader(self) -> None:
        self._reset_state()
        self._install_static_entries()
        self._last_change = PeriodicTasks.last_change()
        self._fingerprints = self._schedule_fingerprints()
        now = utcnow()
        rows = PeriodicTask.objects.filter(enabled=True).values(*ROW_FIELDS)
        for row in rows.iterator(chunk_size=2000):
            self.stats["rows_loaded"] += 1
            self._install(row, now)
        self.stats["full_loads"] += 1
        self._next_full = time.monotonic() + self.full_sync_seconds
        self._leading = True
        logger.info("beat: %s leads; %d entries scheduled", self.lease.identity, len(self._entries))

    def _step_down(self) -> None:
        logger.warning("beat: %s lost the leader lease; standing by", self.lease.identity)
        self.sync()
        self._reset_state()

    def _install_static_entries(self) -> None:
        """Install settings.CELERY_BEAT_SCHEDULE as PeriodicTask rows, as django-celery-beat does."""
        for name, fields in (self.app.conf.beat_schedule or {}).items():
            try:
                defaults = ModelEntry._unpack_fields(**fields)
                existing = PeriodicTask.objects.filter(name=name).first()
                # Saving an unchanged row would move its interval grid (anchored at date_changed).
                if existing is None or any(getattr(existing, k) != v for k, v in defaults.items()):
                    PeriodicTask.objects.update_or_create(name=name, defaults=defaults)
            except DB_ERRORS:
                raise
            except Exception:
                logger.exception("beat: cannot install static entry %r: %r", name, fields)

    # --- the heap -----------------------------------------------------------------------------
    def _push(self, entry: BeatEntry, now: datetime) -> None:
        entry.next_slot = slot_next(entry.slots, last=entry.last_slot, now=now)
        # expires is inclusive, like the job schedule's end_at it mirrors.
        if entry.next_slot is None or (entry.expires is not None and entry.next_slot > entry.expires):
            self._retire(entry)
            return
        heapq.heappush(self._due, (entry.next_slot.timestamp(), next(self._seq), entry))

    def _install(self, row: dict[str, Any], now: datetime) -> None:
        pk = row["id"]
        self._known_changed[pk] = row["date_changed"]
        self._watermark = max(self._watermark, row["date_changed"])
        old = self._entries.pop(pk, None)
        if not row["enabled"]:
            self._enabled_ids.discard(pk)
            return
        self._enabled_ids.add(pk)
        entry = entry_from_row(row)
        if entry is None:
            return
        # Never fire a slot already fired, even if its bookkeeping is not written yet.
        fired = [s for s in (entry.last_slot, old and old.last_slot, self._pending.get(pk, (None,))[0]) if s]
        entry.last_slot = max(fired) if fired else None
        self._entries[pk] = entry
        self._push(entry, now)

    def _drop(self, pk: int) -> None:
        self._entries.pop(pk, None)
        self._enabled_ids.discard(pk)

    def _retire(self, entry: BeatEntry) -> None:
        """A one-off that ran, an expired entry or a clocked time passed: remove it and disable its row."""
        self._drop(entry.pk)
        self._disable[entry.pk] = entry.date_changed

    def _fire_due(self) -> float:
        """Fire every entry whose slot has come (within a time budget); return the delay to the next."""
        budget_end = time.monotonic() + 1.0
        renew_at = time.monotonic() + self.lease.seconds / 4
        batch: list[tuple[BeatEntry, datetime]] = []
        try:
            while self._due:
                now = utcnow()
                ts, _, entry = self._due[0]
                if ts > now.timestamp():
                    return min(ts - now.timestamp(), self.max_interval, self.sync_seconds)
                if time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + self.lease.seconds / 4
                    if not self.lease.hold():
                        batch.clear()  # not ours to fire any more; the new leader fires them
                        self._step_down()
                        return 0.0
                if not self.lease.valid() or time.monotonic() >= budget_end:
                    return 0.0  # let the next tick renew the lease, sync and flush first
                heapq.heappop(self._due)
                if self._entries.get(entry.pk) is not entry or entry.next_slot is None:
                    continue  # reloaded or removed since it was pushed
                if entry.task == FIRE_TASK:
                    batch.append((entry, entry.next_slot))
                    if len(batch) >= FIRE_BATCH_MAX and not self._fire_batch(batch):
                        return 1.0
                elif not self._fire(entry, entry.next_slot, now):
                    return 1.0  # the broker is away; try again shortly
            return min(self.max_interval, self.sync_seconds)
        finally:
            if batch and self._leading:
                self._fire_batch(batch)

    def _fire(self, entry: BeatEntry, slot: datetime, now: datetime) -> bool:
        try:
            self.send_entry(entry, slot)
        except Exception:
            logger.exception("beat: could not send %s for %s; retrying", entry.name, utc_iso(slot))
            heapq.heappush(self._due, (now.timestamp() + 1.0, next(self._seq), entry))
            return False
        self._fired(entry, slot, now)
        return True

    def _fired(self, entry: BeatEntry, slot: datetime, now: datetime) -> None:
        self.stats["sent"] += 1
        entry.last_slot = slot
        _, count = self._pending.get(entry.pk, (slot, 0))
        self._pending[entry.pk] = (slot, count + 1)
        if entry.one_off:
            self._retire(entry)
        else:
            self._push(entry, now)

    def _fire_batch(self, batch: list[tuple[BeatEntry, datetime]]) -> bool:
        """Fire a batch of job slots in one transaction; on failure they are retried in a second."""
        now = utcnow()
        try:
            created = self.fire_slots(batch)
        except Exception as exc:
            # Nothing of the batch was fired (one transaction), or it was and firing again is a no-op.
            if isinstance(exc, DB_ERRORS):
                _connection_drop()
                logger.warning("beat: could not fire %d slot(s), retrying: %s", len(batch), _oneline(exc))
            else:
                logger.exception("beat: could not fire %d slot(s); retrying", len(batch))
            for entry, _ in batch:
                heapq.heappush(self._due, (now.timestamp() + 1.0, next(self._seq), entry))
            batch.clear()
            return False
        logger.info("beat: fired %d slot(s): %d new execution(s)", len(batch), len(created))
        for entry, slot in batch:
            self._fired(entry, slot, now)
        batch.clear()
        return True

    def fire_slots(self, batch: list[tuple[BeatEntry, datetime]]) -> list[int]:
        """Create, place and publish the executions of these job slots (one transaction); their ids."""
        slots = []
        for entry, slot in batch:
            job_id = entry.kwargs.get("job_id")
            if isinstance(job_id, int) and not isinstance(job_id, bool):
                slots.append(Slot(job_id=job_id, scheduled_for=slot))
            else:
                logger.error(
                    "beat: %s has no integer job_id in its kwargs; slot %s dropped", entry.name, slot
                )
        return slots_fire(slots=slots)

    def send_entry(self, entry: BeatEntry, slot: datetime) -> Any:
        """Publish one firing; the slot goes in the scheduled_for kwarg (jobs.fire) and header (all)."""
        slot_iso = utc_iso(slot)
        kwargs = (
            {**entry.kwargs, "scheduled_for": slot_iso} if entry.task in SLOT_KWARG_TASKS else entry.kwargs
        )
        headers = {
            **entry.headers,
            "periodic_task_name": entry.name,
            "scheduled_for": slot_iso,
            "celery_beat_task": True,
        }
        logger.debug("beat: sending %s (%s) for %s", entry.name, entry.task, slot_iso)
        return self.app.send_task(
            entry.task,
            args=entry.args,
            kwargs=kwargs,
            producer=self.producer,
            headers=headers,
            **entry.options,
        )

    # --- bookkeeping --------------------------------------------------------------------------
    def _flush(self) -> None:
        """Write last_run_at / total_run_count of everything fired since the last flush in one statement."""
        pending, self._pending = self._pending, {}
        try:
            rows = sorted(pending.items())
            table = connection.ops.quote_name(PeriodicTask._meta.db_table)
            with transaction.atomic():
                for start in range(0, len(rows), 1000):
                    chunk = rows[start : start + 1000]
                    values = ", ".join(["(%s::integer, %s::timestamptz, %s::integer)"] * len(chunk))
                    params = [v for pk, (slot, n) in chunk for v in (pk, slot, n)]
                    with connection.cursor() as cursor:
                        cursor.execute(
                            f"UPDATE {table} AS p SET "  # noqa: S608 - table name from model meta
                            "last_run_at = GREATEST(COALESCE(p.last_run_at, v.t), v.t), "
                            "total_run_count = p.total_run_count + v.n "
                            f"FROM (VALUES {values}) AS v(id, t, n) WHERE p.id = v.id",
                            params,
                        )
                # Only if nobody edited the row since: a re-enabled row must stay enabled.
                for pk, changed in self._disable.items():
                    PeriodicTask.objects.filter(pk=pk, date_changed=changed).update(enabled=False)
        except BaseException:
            for pk, (slot, n) in pending.items():
                newer, more = self._pending.get(pk, (slot, 0))
                self._pending[pk] = (max(slot, newer), n + more)
            raise
        self._disable = {}
        if rows:
            self.stats["flushes"] += 1

    # --- change detection ---------------------------------------------------------------------
    def _sync_changes(self, now_m: float) -> None:
        """Reload only the rows that changed since the last look (all that differ, after a cut-off look)."""
        full = now_m >= self._next_full
        change = PeriodicTasks.last_change()
        if change == self._last_change and not full:
            return
        self.stats["change_checks"] += 1
        now = utcnow()
        try:
            # The margin covers transactions that commit a little after their rows' date_changed.
            pairs = PeriodicTask.objects.filter(date_changed__gt=self._watermark - self.change_margin)
            stale = [
                pk for pk, dc in pairs.values_list("id", "date_changed") if self._known_changed.get(pk) != dc
            ]
            self._load(stale, now)
            self._check_schedule_rows(now)
            self._check_enabled_set(now, full=full)
        except BaseException:
            # Cut off (the database went away): the rows it loaded moved the watermark past some it did
            # not, so the next look compares every row instead of trusting last_change and the watermark.
            self._next_full = 0.0
            raise
        self._last_change = change
        if full:
            self._next_full = now_m + self.full_sync_seconds

    def _load(self, pks: list[int], now: datetime) -> None:
        for start in range(0, len(pks), 2000):
            chunk = pks[start : start + 2000]
            found = set()
            for row in PeriodicTask.objects.filter(pk__in=chunk).values(*ROW_FIELDS):
                self.stats["rows_loaded"] += 1
                found.add(row["id"])
                self._install(row, now)
            for pk in set(chunk) - found:  # deleted
                self._known_changed.pop(pk, None)
                self._drop(pk)

    def _check_enabled_set(self, now: datetime, *, full: bool) -> None:
        """Deletions and queryset.update() leave date_changed alone: compare the enabled set instead."""
        enabled = PeriodicTask.objects.filter(enabled=True)
        if not full and enabled.count() == len(self._enabled_ids):
            return
        self.stats["id_diffs"] += 1
        current = dict(enabled.values_list("id", "date_changed"))
        for pk in self._enabled_ids - current.keys():
            self._drop(pk)
        stale = [
            pk
            for pk, dc in current.items()
            if pk not in self._enabled_ids or self._known_changed.get(pk) != dc
        ]
        self._load(stale, now)

    def _schedule_fingerprints(self) -> dict[str, str]:
        fingerprints = {}
        with connection.cursor() as cursor:
            for kind, model in _SCHEDULE_MODELS.items():
                table = connection.ops.quote_name(model._meta.db_table)
                cursor.execute(
                    f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {table} t"  # noqa: S608
                )
                fingerprints[kind] = cursor.fetchone()[0]
        return fingerprints

    def _check_schedule_rows(self, now: datetime) -> None:
        """An edited Interval/Crontab/Clocked row (shared by many tasks) reloads the tasks that use it."""
        fingerprints = self._schedule_fingerprints()
        changed = [kind for kind in fingerprints if fingerprints[kind] != self._fingerprints.get(kind)]
        for kind in changed:
            users = [e for e in self._entries.values() if e.schedule_kind == kind]
            rows = _SCHEDULE_MODELS[kind].objects.filter(id__in={e.schedule_id for e in users})
            sigs = {r[0]: tuple(map(_sig_value, r[1:])) for r in rows.values_list("id", *_SIG_FIELDS[kind])}
            self._load([e.pk for e in users if sigs.get(e.schedule_id) != e.schedule_sig], now)
        # Only once their users are reloaded: a look cut off before that sees the same change again.
        self._fingerprints = fingerprints


def _sig_value(value: Any) -> Any:
    return str(value) if not isinstance(value, int | str | datetime) else value


def _connection_drop() -> None:
    """Close the connection a database error may have left broken; the next query opens a fresh one."""
    # Not close_old_connections(): it closes only after an error Django itself wrapped (errors_occurred),
    # and after a terminated backend a new connection costs less than checking the old one.
    with contextlib.suppress(*DB_ERRORS):
        connection.close()


def _oneline(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
