"""What the dashboard shows, for one viewer: their jobs' executions (operators: all) and the nodes.

A failure shows why its run ended (end_cause, e.g. "out of memory") and, when measured (container jobs),
its peak memory against the job's memory_mb and its CPU seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from accounts.permissions import is_operator, scope_to_user
from jobs.admin.display import cpu_text, end_cause_text, memory_text
from jobs.models import DeadLetter, Execution, Job
from monitoring.models import ExecutionHourlyCount
from monitoring.selectors.summary import FAILURE_STATUSES, _nodes

HOURS = 24
CLOSED_AFTER = timedelta(minutes=5)  # a finished execution's row is committed well within this


def _series_start(now: datetime) -> datetime:
    return (now - timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)


def _closed_until(now: datetime) -> datetime:
    """The start of the hours not yet closed: an hour ended CLOSED_AFTER ago has all its rows committed."""
    return (now - CLOSED_AFTER).replace(minute=0, second=0, microsecond=0)


def _by_hour(executions: Any) -> Any:
    return executions.annotate(hour=TruncHour("finished_at", tzinfo=UTC)).order_by()


def _hours_fill(start: datetime, closed: datetime) -> None:
    """Count the series' closed hours missing from ExecutionHourlyCount (once an hour, normally one hour).

    One scan of execution_finished_at over those hours only, for every owner at once; racing fills insert
    the same rows, and the unique constraint keeps one.
    """
    wanted = {start + timedelta(hours=i) for i in range((closed - start) // timedelta(hours=1))}
    markers = ExecutionHourlyCount.objects.filter(hour__gte=start, owner=None, status="")
    missing = sorted(wanted - set(markers.values_list("hour", flat=True)))
    if not missing:
        return
    hours = Q()
    for hour in missing:
        hours |= Q(finished_at__gte=hour, finished_at__lt=hour + timedelta(hours=1))
    rows = (
        _by_hour(Execution.objects.filter(hours))
        .values("hour", "job__owner", "status")
        .annotate(n=Count("pk"))
    )
    counts = [
        ExecutionHourlyCount(
            hour=row["hour"], owner_id=row["job__owner"], status=row["status"], count=row["n"]
        )
        for row in rows
    ]
    counts += [ExecutionHourlyCount(hour=hour, owner=None, status="", count=0) for hour in missing]
    ExecutionHourlyCount.objects.bulk_create(counts, ignore_conflicts=True)
    ExecutionHourlyCount.objects.filter(hour__lt=start - timedelta(hours=HOURS)).delete()


def _finished_by_hour(executions: Any, user: Any, start: datetime, now: datetime) -> list[dict[str, Any]]:
    """(hour, status, n) of `user`'s executions finished since `start`.

    Closed hours come from ExecutionHourlyCount, the open ones (at most the last hour and CLOSED_AFTER)
    from the executions, through execution_finished_at: the cost follows an hour's throughput, not a day's.
    """
    closed = _closed_until(now)
    _hours_fill(start, closed)
    stored = scope_to_user(ExecutionHourlyCount.objects.filter(hour__gte=start).exclude(status=""), user)
    live = (
        _by_hour(executions.filter(finished_at__gte=closed)).values("hour", "status").annotate(n=Count("pk"))
    )
    return [*stored.order_by().values("hour", "status").annotate(n=Sum("count")), *live]


def _hourly(rows: list[dict[str, Any]], start: datetime) -> list[dict[str, Any]]:
    """The 24 h series: finished and failed per hour, every hour present."""
    series: list[dict[str, Any]] = [
        {"hour": start + timedelta(hours=i), "total": 0, "failed": 0} for i in range(HOURS)
    ]
    by_hour = {point["hour"]: point for point in series}
    for row in rows:
        point = by_hour.get(row["hour"])
        if point is not None:  # a clock ahead of ours may have finished one "in the future"
            point["total"] += row["n"]
            point["failed"] += row["n"] if row["status"] in FAILURE_STATUSES else 0
    return series


def _totals(executions: Any, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Active executions now (exact, through execution_active); the others as finished in the 24 h series.

    Not every retained execution: counting them all scans the whole history on every refresh.
    """
    totals = dict.fromkeys(Execution.Status.values, 0)
    active = (
        executions.filter(status__in=Execution.ACTIVE).order_by().values("status").annotate(n=Count("pk"))
    )
    for row in active:
        totals[row["status"]] = row["n"]
    for row in rows:
        if row["status"] not in Execution.ACTIVE:
            totals[row["status"]] += row["n"]
    return totals


def _running(executions: Any, now: datetime) -> list[dict[str, Any]]:
    rows = (
        executions.filter(status=Execution.Status.RUNNING)
        .select_related("job", "node")
        .order_by("started_at")
    )
    return [
        {
            "id": e.pk,
            "job": e.job.name,
            "job_id": e.job_id,
            "node": e.node.name if e.node else "",
            "progress": e.progress,
            "elapsed_seconds": (now - e.started_at).total_seconds() if e.started_at else 0.0,
        }
        for e in rows[:50]
    ]


def dashboard_data(*, user: Any) -> dict[str, Any]:
    """Totals, 24 h series, nodes, running executions, latest failures and dead letters (for `user`).

    Totals are the active executions and those finished in the series' 24 h, never the whole history.
    """
    now = timezone.now()
    executions = scope_to_user(Execution.objects.all(), user, owner_field="job__owner")
    jobs = scope_to_user(Job.objects.all(), user)
    letters = scope_to_user(DeadLetter.objects.all(), user, owner_field="job__owner")
    start = _series_start(now)
    finished = _finished_by_hour(executions, user, start, now)
    job_totals = dict.fromkeys(Job.Status.values, 0)
    for row in jobs.order_by().values("status").annotate(n=Count("pk")):
        job_totals[row["status"]] = row["n"]
    _by_status, nodes = _nodes()
    failures = (
        executions.filter(status__in=FAILURE_STATUSES, finished_at__isnull=False)
        .select_related("job")
        .order_by("-finished_at")[:10]
    )
    return {
        "now": now,
        "totals": _totals(executions, finished),
        "job_totals": job_totals,
        "series": _hourly(finished, start),
        "nodes": nodes,
        "running": _running(executions, now),
        "failures": [
            {
                "id": e.pk,
                "job": e.job.name,
                "status": e.status,
                "finished_at": e.finished_at,
                "error": e.error[:200],
                "end_cause": e.end_cause,
                "end_cause_text": end_cause_text(e.end_cause),
                "memory_text": memory_text(e.memory_peak_bytes, e.job.memory_mb),
                "cpu_text": cpu_text(e.cpu_seconds),
            }
            for e in failures
        ],
        "dead_letters": [
            {
                "id": d.pk,
                "job": d.job.name,
                "execution_id": d.execution_id,
                "created_at": d.created_at,
                "error": d.error[:200],
            }
            for d in letters.filter(status=DeadLetter.Status.OPEN)
            .select_related("job")
            .order_by("-created_at")[:10]
        ],
        "flower_url": settings.SCHEDULER_FLOWER_URL,
    }


def dashboard_cached(*, user: Any) -> dict[str, Any]:
    """dashboard_data() cached a few seconds per scope (one entry for all operators, one per other user)."""
    scope = "all" if is_operator(user) else f"user:{user.pk}"
    key = f"monitoring:dashboard:v3:{scope}"  # v3: totals are active now + finished in 24 h
    ttl = float(settings.SCHEDULER_METRICS_CACHE_SECONDS)
    if ttl <= 0:
        return dashboard_data(user=user)
    return cast(dict[str, Any], cache.get_or_set(key, lambda: dashboard_data(user=user), timeout=ttl))
