"""The cluster summary behind /metrics, /api/v1/metrics/ and `manage.py status`, read at request time.

Everything comes from PostgreSQL and the broker when asked (no per-process counters), so any number of
gunicorn and worker processes report the same values; the result is cached a few seconds in Redis.

No query reads the whole execution history (a million rows and more): active executions are counted
exactly through the partial index `execution_active`, finished ones only within the metrics window through
`execution_finished_at`, and the size of the history is PostgreSQL's estimate (pg_class.reltuples).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connections, router
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from jobs.beat.lease import leader_status
from jobs.models import DeadLetter, Execution, Job
from monitoring.models import Alert
from monitoring.selectors.autoscale import desired_workers
from nodes.models import Node
from nodes.selectors import cluster_usage

logger = logging.getLogger(__name__)

SUMMARY_CACHE_KEY = "monitoring:summary:v1"
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Outcomes that count as a failure (a failed attempt, whatever happened next to it).
FAILURE_STATUSES = frozenset(
    {
        Execution.Status.FAILED,
        Execution.Status.RETRYING,
        Execution.Status.TIMED_OUT,
        Execution.Status.LOST,
        Execution.Status.DEAD,
    }
)
SHARED_QUEUES = ("default", "dead_letter")


def _counts(queryset: Any, field: str, values: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(values, 0)
    for row in queryset.order_by().values(field).annotate(n=Count("pk")):
        counts[row[field]] = row["n"]
    return counts


def _histogram(queryset: Any, expression: Any, buckets: tuple[float, ...]) -> dict[str, Any]:
    """Cumulative buckets of `expression` (a duration) over the rows, in one aggregate query."""
    annotated = queryset.annotate(value=ExpressionWrapper(expression, output_field=DurationField()))
    aggregates = {
        f"le_{i}": Count("pk", filter=Q(value__lte=timedelta(seconds=le))) for i, le in enumerate(buckets)
    }
    row = annotated.aggregate(count=Count("pk"), sum=Sum("value"), **aggregates)
    total = row["sum"].total_seconds() if row["sum"] is not None else 0.0
    return {
        "buckets": [[le, row[f"le_{i}"]] for i, le in enumerate(buckets)],
        "count": row["count"],
        "sum": round(total, 6),
    }


def executions_by_status(executions: Any, since: Any) -> dict[str, int]:
    """Active executions (pending, queued, running) now, exactly; the others finished since `since`.

    Two index range scans (execution_active, execution_finished_at), so the cost follows the active set and
    the window's throughput, not how much history is retained.
    """
    counts = _counts(executions.filter(status__in=Execution.ACTIVE), "status", Execution.Status.values)
    finished = executions.filter(finished_at__gte=since).exclude(status__in=Execution.ACTIVE)
    for status, n in _counts(finished, "status", []).items():
        counts[status] = n
    return counts


def executions_retained_estimate() -> int:
    """About how many executions are retained: PostgreSQL's row estimate (as of the last ANALYZE)."""
    using = router.db_for_read(Execution)
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_partition_tree(%s::regclass) t"
            " JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf",
            [Execution._meta.db_table],
        )
        (estimate,) = cursor.fetchone()
    return int(estimate)


def queue_names() -> list[str]:
    """Shared queues, routed queues and every node's own queue."""
    routed = {route.get("queue") for route in (settings.CELERY_TASK_ROUTES or {}).values()}
    names = set(SHARED_QUEUES) | {q for q in routed if q}
    names |= {f"node.{name}" for name in Node.objects.values_list("name", flat=True)}
    return sorted(names)


def queue_depths(names: list[str] | None = None) -> dict[str, int]:
    """Messages waiting per queue: LLEN of the kombu list and its priority sub-lists (queue:1 .. queue:9)."""
    names = names if names is not None else queue_names()
    with current_app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        steps = sorted(set(channel.priority_steps))
        pipe = channel.client.pipeline(transaction=False)
        keys = [(q, f"{q}{channel.sep}{pri}" if pri else q) for q in names for pri in steps]
        for _queue, key in keys:
            pipe.llen(key)
        lengths = pipe.execute()
    depths = dict.fromkeys(names, 0)
    for (queue, _key), length in zip(keys, lengths, strict=True):
        depths[queue] += int(length)
    return depths


def _nodes() -> tuple[dict[str, int], list[dict[str, Any]]]:
    usage = cluster_usage()
    rows = [
        {
            "name": n.name,
            "status": n.status,
            "cpu_capacity": float(n.cpu_capacity),
            "cpu_allocated": float(n.cpu_allocated),
            "cpu_used": float(n.cpu_used),
            "memory_mb_capacity": int(n.memory_mb_capacity),
            "memory_mb_allocated": int(n.memory_mb_allocated),
            "memory_mb_used": int(n.memory_mb_used),
            "running": n.running,
            "last_heartbeat_at": n.last_heartbeat_at.isoformat() if n.last_heartbeat_at else None,
        }
        for n in usage.nodes
    ]
    return dict(usage.nodes_by_status), rows


def _beat() -> dict[str, Any]:
    try:
        status = leader_status()
    except redis.RedisError as exc:
        return {"healthy": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if status.get("renewed_at") is not None:
        status["renewed_at"] = status["renewed_at"].isoformat()
    return status


def summary_compute() -> dict[str, Any]:
    """Everything the metrics and the status overview report, computed now (JSON-ready)."""
    now = timezone.now()
    window = timedelta(seconds=settings.SCHEDULER_METRICS_WINDOW_SECONDS)
    executions = Execution.objects.all()
    pending = executions.filter(status=Execution.Status.PENDING)
    oldest = pending.aggregate(t=Min("created_at"))["t"]
    nodes_by_status, nodes = _nodes()
    try:
        queues: dict[str, int] | None = queue_depths()
    except (KombuOperationalError, redis.RedisError, OSError) as exc:
        logger.warning("metrics: broker unreachable: %r", exc)
        queues = None
    finished = executions.filter(finished_at__gte=now - window, started_at__isnull=False)
    fired = executions.filter(created_at__gte=now - window, trigger=Execution.Trigger.SCHEDULE)
    return {
        "generated_at": now.isoformat(),
        "window_seconds": settings.SCHEDULER_METRICS_WINDOW_SECONDS,
        "jobs_by_status": _counts(Job.objects.all(), "status", Job.Status.values),
        "executions_by_status": executions_by_status(executions, now - window),
        "executions_retained_estimate": executions_retained_estimate(),
        "executions_pending": pending.count(),
        "oldest_pending_seconds": (now - oldest).total_seconds() if oldest else None,
        "dead_letters_by_status": _counts(DeadLetter.objects.all(), "status", DeadLetter.Status.values),
        "nodes_by_status": nodes_by_status,
        "nodes": nodes,
        "queues": queues,
        "duration_seconds": _histogram(finished, F("finished_at") - F("started_at"), DURATION_BUCKETS),
        "lateness_seconds": _histogram(fired, F("created_at") - F("scheduled_for"), LATENESS_BUCKETS),
        "alerts_firing": Alert.objects.filter(state=Alert.State.FIRING).count(),
        "beat": _beat(),
        "desired_workers": [signal.as_dict() for signal in desired_workers()],
    }


def summary_cached() -> dict[str, Any]:
    """summary_compute(), shared by every process through the cache for SCHEDULER_METRICS_CACHE_SECONDS."""
    ttl = float(settings.SCHEDULER_METRICS_CACHE_SECONDS)
    if ttl <= 0:
        return summary_compute()
    try:
        cached = cache.get(SUMMARY_CACHE_KEY)
    except redis.RedisError:
        cached = None
    if cached is not None:
        return cached
    summary = summary_compute()
    try:
        cache.set(SUMMARY_CACHE_KEY, summary, timeout=ttl)
    except redis.RedisError as exc:
        logger.warning("metrics: cache unavailable: %r", exc)
    return summary
