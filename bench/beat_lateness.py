"""Beat firing lateness: our JobScheduler vs django-celery-beat's DatabaseScheduler, side by side.

N active interval schedules (one shared IntervalSchedule) whose start times are spread evenly over one
interval; each scheduler runs in this process, publishing for real to a dedicated Redis DB, for a window
of W seconds. Every schedule has at most one slot in the window (W <= interval), its start time, so
lateness = send time - start time for both schedulers. Slots of the last GRACE seconds are not counted;
'sent' counts the due slots sent before the window closed. Halfway through, one schedule is edited (save())
and the longest tick in the 10 s that follow, and the worst lateness of the slots due in them, are reported.

Run: .venv/bin/python bench/beat_lateness.py [--sizes 1000,10000,100000] [--window 60,60,120]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from _setup import machine, setup

SPREAD = {1_000: 60, 10_000: 60, 100_000: 600}  # interval (and spread) in seconds per size
GRACE = 5.0
QUEUE = "bench"  # its own queue and lease key: tests may share the Redis DB while this runs


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")
    )


def make_rows(n: int, every: int, lead: float) -> dict[str, datetime]:
    """N rows, start times spread over one interval from now + lead (set once the rows exist)."""
    from django.db import connection
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    PeriodicTask.objects.all()._raw_delete(using="default")  # no per-row signals: this is setup
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.bulk_create(
        (
            PeriodicTask(name=f"bench:{i}", task="bench.noop", queue=QUEUE, interval=interval, kwargs="{}")
            for i in range(n)
        ),
        batch_size=5000,
    )
    t0 = datetime.now(UTC) + timedelta(seconds=lead)
    step = timedelta(seconds=every) / n
    with connection.cursor() as cursor:
        # Existing schedules, edited long ago, whose slots are spread evenly over one interval.
        cursor.execute(
            f"UPDATE {PeriodicTask._meta.db_table} SET date_changed = %s, "  # noqa: S608
            "start_time = %s + substring(name from 7)::int * %s * interval '1 microsecond'",
            [t0 - timedelta(days=1), t0, step // timedelta(microseconds=1)],
        )
    PeriodicTasks.update_changed()
    return {f"bench:{i}": t0 + i * step for i in range(n)}


def scheduler_classes() -> dict[str, type]:
    from django_celery_beat.schedulers import DatabaseScheduler

    from jobs.beat import JobScheduler

    class OursRecording(JobScheduler):
        sends: list[tuple[str, float]]
        lease_key = "bench:beat:leader"

        def send_entry(self, entry: Any, slot: datetime) -> Any:
            result = super().send_entry(entry, slot)
            self.sends.append((entry.name, time.time()))
            return result

    class StockRecording(DatabaseScheduler):
        sends: list[tuple[str, float]]

        def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
            result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
            self.sends.append((entry.name, time.time()))
            return result

    return {"ours (jobs.beat)": OursRecording, "stock DatabaseScheduler": StockRecording}


def run_one(cls: type, n: int, window: float, lead: float) -> dict[str, Any]:
    import redis
    from django.conf import settings
    from django_celery_beat.models import PeriodicTask

    from scheduler_project.celery import app

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(QUEUE, "bench:beat:leader")
    starts = make_rows(n, SPREAD.get(n, 60), lead)
    t0 = starts["bench:0"]
    app.conf.beat_schedule = {}

    created = time.perf_counter()
    scheduler = cls(app=app)
    scheduler.sends = []
    end = t0.timestamp() + window
    edit_at = t0.timestamp() + window / 2
    edited_at: float | None = None
    ticks: list[tuple[float, float]] = []  # (start wall time, duration)
    first_tick_done: float | None = None
    while time.time() < end:
        started = time.time()
        interval = scheduler.tick()
        ticks.append((started, time.time() - started))
        if first_tick_done is None:
            first_tick_done = time.perf_counter() - created
        if edited_at is None and time.time() >= edit_at:
            task = PeriodicTask.objects.get(name=f"bench:{n - 1}")  # its slot is at the window's end
            task.description = "edited"
            task.save()
            edited_at = time.time()
        if interval and interval > 0:
            time.sleep(min(interval, max(end - time.time(), 0)))
        if scheduler.should_sync():
            scheduler._do_sync()
    scheduler.close()
    broker.delete(QUEUE)

    # A slot counts as due if it came GRACE seconds before the window closed; one sent later is unsent.
    due = {name for name, start in starts.items() if start.timestamp() < end - GRACE}
    first: dict[str, float] = {}
    dupes = 0
    for name, at in scheduler.sends:
        if name not in due:
            continue
        if name in first and at - first[name] < SPREAD.get(n, 60) / 2:
            dupes += 1  # the same slot sent again (an entry's next slot, one interval later, is not)
        first.setdefault(name, at)
    late = [at - starts[name].timestamp() for name, at in first.items()]
    sent = set(first)
    after_edit = [d for s, d in ticks if edited_at is not None and edited_at <= s < edited_at + 10]
    # What the edit costs the schedules due right after it: their worst lateness.
    late_after_edit = [
        late
        for name, late in zip(first, late, strict=True)
        if edited_at is not None and edited_at <= starts[name].timestamp() < edited_at + 10
    ]
    return {
        "due": len(due),
        "sent": len(sent),
        "dupes": dupes,
        "median": statistics.median(late) if late else float("nan"),
        "p99": percentile(late, 99),
        "max": max(late) if late else float("nan"),
        "startup": first_tick_done or 0.0,
        "edit_pause": max(after_edit) if after_edit else float("nan"),
        "edit_late": max(late_after_edit) if late_after_edit else float("nan"),
        "tick_p50": statistics.median(d for _, d in ticks) if ticks else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--window", default="60,60,120", help="seconds of firing measured, per size")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds before the first slot (0: auto)")
    args = parser.parse_args()
    setup()
    sizes = [int(s) for s in args.sizes.split(",")]
    windows = [float(w) for w in args.window.split(",")]
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    header = (
        f"{'schedules':>9} {'interval':>8} {'window':>6}  {'scheduler':<24} {'due':>6} {'sent':>6} "
        f"{'dup':>4} "
        f"{'median s':>8} {'p99 s':>8} {'max s':>8} {'startup s':>9} {'edit: max tick s':>16} "
        f"{'late after edit s':>17} {'tick p50 ms':>11}"
    )
    print(header)
    print("-" * len(header))
    for n, window in zip(sizes, windows + windows[-1:] * len(sizes), strict=False):
        lead = args.lead or max(10.0, n / 3000)
        for label, cls in scheduler_classes().items():
            r = run_one(cls, n, window, lead)
            print(
                f"{n:>9} {SPREAD.get(n, 60):>7}s {window:>5.0f}s  {label:<24} {r['due']:>6} {r['sent']:>6} "
                f"{r['dupes']:>4} {r['median']:>8.3f} {r['p99']:>8.3f} {r['max']:>8.3f} {r['startup']:>9.1f} "
                f"{r['edit_pause']:>16.3f} {r['edit_late']:>17.3f} {r['tick_p50'] * 1000:>11.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
