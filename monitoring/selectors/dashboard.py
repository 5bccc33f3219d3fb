"""What the dashboard shows, for one viewer: their jobs' executions (operators: all) and the nodes.

A failure shows why its run ended (end_cause, e.g. "out of memory") and, when measured (container jobs),
its peak memory against the job's memory_mb and its CPU seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Q
from django.db.models.functions import TruncHour
from django.utils import timezone

from accounts.permissions import is_operator, scope_to_user
from jobs.admin.display import cpu_text, end_cause_text, memory_text
from jobs.models import DeadLetter, Execution, Job
from monitoring.selectors.summary import FAILURE_STATUSES, _nodes

HOURS = 24


def _hourly(executions: Any, now: datetime) -> list[dict[str, Any]]:
    start = (now - timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    rows = (
        executions.filter(finished_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .order_by()
        .values("hour")
        .annotate(total=Count("pk"), failed=Count("pk", filter=Q(status__in=FAILURE_STATUSES)))
    )
    by_hour = {row["hour"]: row for row in rows}
    series = []
    for i in range(HOURS):
        hour = start + timedelta(hours=i)
        row = by_hour.get(hour, {"total": 0, "failed": 0})
        series.append({"hour": hour, "total": row["total"], "failed": row["failed"]})
    return series


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
    """Totals, 24 h series, nodes, running executions, latest failures and dead letters (for `user`)."""
    now = timezone.now()
    executions = scope_to_user(Execution.objects.all(), user, owner_field="job__owner")
    jobs = scope_to_user(Job.objects.all(), user)
    letters = scope_to_user(DeadLetter.objects.all(), user, owner_field="job__owner")
    totals = dict.fromkeys(Execution.Status.values, 0)
    for row in executions.order_by().values("status").annotate(n=Count("pk")):
        totals[row["status"]] = row["n"]
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
        "totals": totals,
        "job_totals": job_totals,
        "series": _hourly(executions, now),
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
    key = f"monitoring:dashboard:v2:{scope}"  # v2: failures carry their end cause
    ttl = float(settings.SCHEDULER_METRICS_CACHE_SECONDS)
    if ttl <= 0:
        return dashboard_data(user=user)
    return cast(dict[str, Any], cache.get_or_set(key, lambda: dashboard_data(user=user), timeout=ttl))
