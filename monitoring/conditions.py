"""What each alert rule kind watches: its params, and the incidents that hold right now.

An incident is keyed by what it is about (an execution, a node, a queue, a job's slot); the evaluator fires
one Alert per key while it holds and resolves it when the key is no longer among the active incidents.
Event kinds (failed, dead-lettered) watch from the rule's creation on; state kinds report what holds now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q

from jobs.models import DeadLetter, Execution, Job
from monitoring.models import AlertRule
from monitoring.selectors.summary import FAILURE_STATUSES, queue_depths
from nodes.models import Node

MAX_INCIDENTS = 100  # per rule and evaluation; the rest fire on the next ticks


@dataclass(frozen=True)
class Incident:
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


Incidents = dict[str, Incident]


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float, str, or list (of strings, each one of `choices`)
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


PARAMS: dict[str, list[Param]] = {
    AlertRule.Kind.EXECUTION_FAILED: [
        Param("window_seconds", int, default=3600, minimum=1),
        # Only runs that ended this way, e.g. ["oom_killed"]; absent: every failure.
        Param("end_causes", list, choices=tuple(Execution.EndCause.values)),
    ],
    AlertRule.Kind.EXECUTION_DEAD: [Param("window_seconds", int, default=7 * 86400, minimum=1)],
    AlertRule.Kind.NODE_OFFLINE: [Param("node", str)],
    AlertRule.Kind.QUEUE_BACKLOG: [Param("threshold", int, required=True, minimum=0), Param("queue", str)],
    AlertRule.Kind.PENDING_TOO_LONG: [Param("seconds", int, required=True, minimum=1)],
    AlertRule.Kind.SLOT_MISSED: [Param("seconds", int, required=True, minimum=1)],
    AlertRule.Kind.FAILURE_RATE: [
        Param("threshold_percent", float, required=True, minimum=0, maximum=100),
        Param("window_seconds", int, default=3600, minimum=1),
        Param("min_executions", int, default=1, minimum=1),
    ],
}
JOB_KINDS = frozenset(
    {
        AlertRule.Kind.EXECUTION_FAILED,
        AlertRule.Kind.EXECUTION_DEAD,
        AlertRule.Kind.PENDING_TOO_LONG,
        AlertRule.Kind.SLOT_MISSED,
        AlertRule.Kind.FAILURE_RATE,
    }
)


def _list_value(spec: Param, value: Any) -> tuple[Any, str | None]:
    allowed = ", ".join(spec.choices)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        return None, f"must be a non-empty list of strings among {allowed}"
    unknown = [item for item in value if item not in spec.choices]
    if unknown:
        return None, f"unknown {', '.join(repr(item[:50]) for item in unknown[:5])}: must be among {allowed}"
    return list(dict.fromkeys(value)), None  # in the order given, each once


def _param_value(spec: Param, value: Any) -> tuple[Any, str | None]:
    if spec.kind is list:
        return _list_value(spec, value)
    if spec.kind is str:
        return (value, None) if isinstance(value, str) and value else (None, "must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"must be a number{' (whole)' if spec.kind is int else ''}"
    if spec.kind is int and value != int(value):
        return None, "must be a whole number"
    value = spec.kind(value)
    if spec.minimum is not None and value < spec.minimum:
        return None, f"must be at least {spec.minimum:g}"
    if spec.maximum is not None and value > spec.maximum:
        return None, f"must be at most {spec.maximum:g}"
    return value, None


def params_clean(kind: str, params: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Validated params of a rule kind (defaults filled in) and errors keyed by "params.<name>"."""
    if kind not in PARAMS:
        return {}, {"kind": f"must be one of {', '.join(PARAMS)}"}
    if not isinstance(params, dict):
        return {}, {"params": "must be an object"}
    specs = {spec.name: spec for spec in PARAMS[kind]}
    errors = {f"params.{name}": f"unknown for kind {kind}" for name in params if name not in specs}
    clean: dict[str, Any] = {}
    for name, spec in specs.items():
        if params.get(name) is None:
            if spec.required:
                errors[f"params.{name}"] = "is required"
            elif spec.default is not None:
                clean[name] = spec.default
            continue
        value, error = _param_value(spec, params[name])
        if error:
            errors[f"params.{name}"] = error
        else:
            clean[name] = value
    return clean, errors


def _since(rule: AlertRule, now: datetime, seconds: int) -> datetime:
    return max(rule.created_at, now - timedelta(seconds=seconds))


def _executions(rule: AlertRule) -> Any:
    qs = Execution.objects.all()
    return qs.filter(job_id=rule.job_id) if rule.job_id else qs


def execution_failed(rule: AlertRule, now: datetime) -> Incidents:
    # A failure holds until a later run of the same job succeeds (or it leaves the window).
    later_success = Execution.objects.filter(
        job_id=OuterRef("job_id"), status=Execution.Status.SUCCEEDED, finished_at__gt=OuterRef("finished_at")
    )
    failed = _executions(rule).filter(
        status__in=FAILURE_STATUSES, finished_at__gte=_since(rule, now, rule.params["window_seconds"])
    )
    if rule.params.get("end_causes"):
        failed = failed.filter(end_cause__in=rule.params["end_causes"])
    failed = failed.filter(~Exists(later_success)).select_related("job").order_by("finished_at")
    return {
        f"execution:{e.pk}": Incident(
            f"execution {e.pk} of job {e.job.name!r} {e.status}{_cause(e.end_cause)}: "
            f"{(e.error or e.status)[:200]}",
            {
                "execution_id": e.pk,
                "job_id": e.job_id,
                "status": e.status,
                "attempt": e.attempt,
                **_usage(e),
            },
        )
        for e in failed[:MAX_INCIDENTS]
    }


def _cause(end_cause: str) -> str:
    return f" ({end_cause})" if end_cause else ""


def _usage(e: Execution) -> dict[str, Any]:
    """Why the run ended and what it used, for an incident's details ("" / None when not known)."""
    return {"end_cause": e.end_cause, "memory_peak_bytes": e.memory_peak_bytes, "cpu_seconds": e.cpu_seconds}


def execution_dead(rule: AlertRule, now: datetime) -> Incidents:
    # Holds while the dead letter is open; replaying or discarding it resolves the incident.
    letters = DeadLetter.objects.filter(
        status=DeadLetter.Status.OPEN, created_at__gte=_since(rule, now, rule.params["window_seconds"])
    )
    if rule.job_id:
        letters = letters.filter(job_id=rule.job_id)
    return {
        f"dead_letter:{d.pk}": Incident(
            f"execution {d.execution_id} of job {d.job.name!r} is dead"
            f"{_cause(d.execution.end_cause)}: {(d.error or '')[:200]}",
            {
                "dead_letter_id": d.pk,
                "execution_id": d.execution_id,
                "job_id": d.job_id,
                **_usage(d.execution),
            },
        )
        for d in letters.select_related("job", "execution").order_by("created_at")[:MAX_INCIDENTS]
    }


def node_offline(rule: AlertRule, now: datetime) -> Incidents:
    # Offline, or silent past the offline threshold (in case the reaper itself is not running).
    stale = now - timedelta(seconds=float(settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS))
    nodes = Node.objects.filter(Q(status=Node.Status.OFFLINE) | Q(last_heartbeat_at__lt=stale))
    if rule.params.get("node"):
        nodes = nodes.filter(name=rule.params["node"])
    return {
        f"node:{n.name}": Incident(
            f"node {n.name} is {n.status if n.status == Node.Status.OFFLINE else 'not heartbeating'}",
            {"node": n.name, "status": n.status, "last_heartbeat_at": _iso(n.last_heartbeat_at)},
        )
        for n in nodes[:MAX_INCIDENTS]
    }


def queue_backlog(rule: AlertRule, now: datetime) -> Incidents:
    names = [rule.params["queue"]] if rule.params.get("queue") else None
    threshold = rule.params["threshold"]
    return {
        f"queue:{queue}": Incident(
            f"queue {queue} holds {depth} messages (over {threshold})", {"queue": queue, "depth": depth}
        )
        for queue, depth in queue_depths(names).items()
        if depth > threshold
    }


def pending_too_long(rule: AlertRule, now: datetime) -> Incidents:
    seconds = rule.params["seconds"]
    waiting = (
        _executions(rule)
        .filter(status=Execution.Status.PENDING, created_at__lt=now - timedelta(seconds=seconds))
        .select_related("job")
        .order_by("created_at")[:MAX_INCIDENTS]
    )
    return {
        f"execution:{e.pk}": Incident(
            f"execution {e.pk} of job {e.job.name!r} pending over {seconds}s: "
            f"{e.pending_reason or 'no node'}",
            {"execution_id": e.pk, "job_id": e.job_id, "pending_reason": e.pending_reason},
        )
        for e in waiting
    }


def slot_missed(rule: AlertRule, now: datetime) -> Incidents:
    # Dead-man's switch: a due slot with no execution `seconds` after it (beat stopped or far behind).
    seconds = rule.params["seconds"]
    fired = Execution.objects.filter(
        job_id=OuterRef("pk"), scheduled_for__gte=OuterRef("schedule__next_run_at")
    )
    # Unlike the other kinds this one also reports slots overdue since before the rule existed: a beat
    # that stopped earlier is exactly what a newly added dead-man's switch should tell about.
    jobs = Job.objects.filter(
        status=Job.Status.ACTIVE, schedule__next_run_at__lt=now - timedelta(seconds=seconds)
    ).filter(~Exists(fired))
    if rule.job_id:
        jobs = jobs.filter(pk=rule.job_id)
    incidents: Incidents = {}
    for job in jobs.select_related("schedule").order_by("schedule__next_run_at")[:MAX_INCIDENTS]:
        slot = job.schedule.next_run_at
        assert slot is not None  # noqa: S101 - filtered above
        incidents[f"job:{job.pk}:slot:{slot.isoformat()}"] = Incident(
            f"job {job.name!r} slot {slot.isoformat()} not started "
            f"{int((now - slot).total_seconds())}s after it was due",
            {"job_id": job.pk, "slot": slot.isoformat()},
        )
    return incidents


def failure_rate(rule: AlertRule, now: datetime) -> Incidents:
    p = rule.params
    finished = _executions(rule).filter(
        finished_at__gte=now - timedelta(seconds=p["window_seconds"]),
        status__in=FAILURE_STATUSES | {Execution.Status.SUCCEEDED},
    )
    row = finished.aggregate(total=Count("pk"), failed=Count("pk", filter=Q(status__in=FAILURE_STATUSES)))
    total, failed = row["total"], row["failed"]
    if total < p["min_executions"] or failed * 100 <= p["threshold_percent"] * total:
        return {}
    key = f"failure_rate:job:{rule.job_id}" if rule.job_id else "failure_rate"
    rate = round(failed * 100 / total, 1)
    return {
        key: Incident(
            f"{rate}% of {total} executions failed in the last {p['window_seconds']}s "
            f"(over {p['threshold_percent']}%)",
            {"failed": failed, "total": total, "rate_percent": rate},
        )
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


EVALUATORS: dict[str, Callable[[AlertRule, datetime], Incidents]] = {
    AlertRule.Kind.EXECUTION_FAILED: execution_failed,
    AlertRule.Kind.EXECUTION_DEAD: execution_dead,
    AlertRule.Kind.NODE_OFFLINE: node_offline,
    AlertRule.Kind.QUEUE_BACKLOG: queue_backlog,
    AlertRule.Kind.PENDING_TOO_LONG: pending_too_long,
    AlertRule.Kind.SLOT_MISSED: slot_missed,
    AlertRule.Kind.FAILURE_RATE: failure_rate,
}


def incidents_for(rule: AlertRule, now: datetime) -> Incidents:
    """The incidents of this rule that hold at `now`."""
    return EVALUATORS[rule.kind](rule, now)
