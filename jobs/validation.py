"""Validation of job input: every field checked, every error keyed by the field it is about."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from nodes.placement import placement_impossible_reason
from scheduler_project.jsonvalues import json_storable_problem

from .executors import Resources, container, container_kinds, payload_errors
from .models import Job
from .schedules import ScheduleInvalid, ScheduleSpec, schedule_spec_parse

JOB_DEFAULTS: dict[str, Any] = {
    "description": "",
    "priority": 5,
    "cpu": Decimal("0.1"),
    "memory_mb": 64,
    "node_selector": None,
    "timeout_seconds": None,  # SCHEDULER_DEFAULT_TIMEOUT_SECONDS
    "max_retries": 0,
    "retry_backoff_seconds": 10,
    "retry_backoff_max_seconds": 3600,
    "retry_jitter": True,
    "concurrency_policy": Job.ConcurrencyPolicy.ALLOW,
    "misfire_policy": Job.MisfirePolicy.RUN_ONCE,
    "idempotency_key": "",
}
JOB_FIELDS = ("name", "kind", "payload", *JOB_DEFAULTS)
# placement_impossible_reason's signature: why no registered node could ever hold a job, or None.
PlacementCheck = Callable[..., str | None]


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a whole number from {low} to {high}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be a whole number from {low} to {high}") from None
    if not low <= number <= high:
        raise ValueError(f"must be from {low} to {high}")
    return number


def _cpu(value: Any) -> Decimal:
    try:
        cpu = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("must be a number of CPUs, e.g. 0.5") from None
    if not cpu.is_finite() or cpu < 0 or cpu > Decimal("9999") or cpu != cpu.quantize(Decimal("0.001")):
        raise ValueError("must be from 0 to 9999 with at most 3 decimals")
    return cpu


def _choice(value: Any, choices: list[str]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return str(value)


def _selector(value: Any) -> dict[str, str]:
    value = value or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("must be an object of label names to string values")
    return dict(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _text(value: Any, max_length: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if required and not value:
        raise ValueError("is required")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    return value


def _cleaners() -> dict[str, Any]:
    max_timeout = settings.SCHEDULER_MAX_TIMEOUT_SECONDS
    return {
        "name": lambda v: _text(v, 200, required=True),
        "description": lambda v: _text(v, 10000),
        "priority": lambda v: _int(v, 0, 9),
        "cpu": _cpu,
        "memory_mb": lambda v: _int(v, 0, 2**31 - 1),
        "node_selector": _selector,
        "timeout_seconds": lambda v: _int(v, 1, max_timeout),
        "max_retries": lambda v: _int(v, 0, 100),
        "retry_backoff_seconds": lambda v: _int(v, 0, 7 * 24 * 3600),
        "retry_backoff_max_seconds": lambda v: _int(v, 0, 7 * 24 * 3600),
        "retry_jitter": _bool,
        "concurrency_policy": lambda v: _choice(v, Job.ConcurrencyPolicy.values),
        "misfire_policy": lambda v: _choice(v, Job.MisfirePolicy.values),
        "idempotency_key": lambda v: _text(v, 255),
    }


def _payload_envelope_error(payload: Any) -> str | None:
    """Size and storability of a payload, whatever its kind (the API, admin and commands all pass here)."""
    problem = json_storable_problem(payload)
    if problem:
        return problem
    limit = settings.SCHEDULER_MAX_PAYLOAD_BYTES
    if len(json.dumps(payload, separators=(",", ":")).encode()) > limit:
        return f"must be at most {limit} bytes as JSON"
    return None


def job_input_clean(
    data: Mapping[str, Any],
    *,
    schedule: Any = None,
    check_schedule: bool = True,
    placement: PlacementCheck | None = None,
) -> tuple[dict[str, Any], ScheduleSpec | None]:
    """Clean job fields and schedule input; raise ValidationError naming every bad field.

    `placement` answers "why could no node hold this?" (default: nodes.placement, asked every time); a
    batch passes placement_check_memo() so equal resources cost one question. It is asked only under
    SCHEDULER_REFUSE_UNPLACEABLE_JOBS: by default such a job is accepted and waits pending with the
    shortfall as its reason (the autoscaling signal counts it).
    """
    errors: dict[str, str] = {}
    fields: dict[str, Any] = {}
    if data.get("timeout_seconds") is None:
        data = {**data, "timeout_seconds": settings.SCHEDULER_DEFAULT_TIMEOUT_SECONDS}
    for name, clean in _cleaners().items():
        try:
            fields[name] = clean(data.get(name, JOB_DEFAULTS.get(name)))
        except ValueError as exc:
            errors[name] = str(exc)
    kind = data.get("kind")
    fields["kind"], fields["payload"] = kind, data.get("payload")
    envelope_error = _payload_envelope_error(data.get("payload"))
    if envelope_error:
        errors["payload"] = envelope_error
    else:
        errors.update(payload_errors(str(kind), data.get("payload")))
    if (
        "retry_backoff_max_seconds" not in errors
        and "retry_backoff_seconds" not in errors
        and fields["retry_backoff_max_seconds"] < fields["retry_backoff_seconds"]
    ):
        errors["retry_backoff_max_seconds"] = "must be at least retry_backoff_seconds"
    if "memory_mb" not in errors and kind in container_kinds():
        problem = container.resources_error(Resources(memory_mb=fields["memory_mb"]))
        if problem is not None:
            errors["memory_mb"] = problem
    spec = None
    if check_schedule:
        try:
            spec = schedule_spec_parse(schedule)
        except ScheduleInvalid as exc:
            errors.update(exc.errors)
    if not errors and settings.SCHEDULER_REFUSE_UNPLACEABLE_JOBS:
        errors.update(_placement_errors(fields, placement or placement_impossible_reason))
    if errors:
        raise ValidationError({field: [message] for field, message in errors.items()})
    return fields, spec


def idempotency_key_clean(value: str) -> str:
    """An Idempotency-Key as stored (stripped, up to 255 characters); else a ValidationError naming it."""
    try:
        return str(_cleaners()["idempotency_key"](value))
    except ValueError as exc:
        raise ValidationError({"idempotency_key": [str(exc)]}) from None


def placement_check_memo() -> PlacementCheck:
    """The placement question, answered once per distinct (cpu, memory, selector) for one batch of jobs."""
    answers: dict[tuple[Any, ...], str | None] = {}

    def check(*, cpu: Decimal, memory_mb: int, node_selector: dict) -> str | None:
        key = (cpu, memory_mb, tuple(sorted((node_selector or {}).items())))
        if key not in answers:
            answers[key] = placement_impossible_reason(
                cpu=cpu, memory_mb=memory_mb, node_selector=node_selector
            )
        return answers[key]

    return check


def _placement_errors(fields: Mapping[str, Any], reason_of: PlacementCheck) -> dict[str, str]:
    """Why no registered node could ever hold the job, keyed by the field that does not fit."""
    cpu, memory, selector = fields["cpu"], fields["memory_mb"], fields["node_selector"]
    reason = reason_of(cpu=cpu, memory_mb=memory, node_selector=selector)
    if reason is None:
        return {}
    if selector and reason_of(cpu=Decimal(0), memory_mb=0, node_selector=selector):
        return {"node_selector": reason}
    if reason_of(cpu=cpu, memory_mb=0, node_selector=selector):
        return {"cpu": reason}
    return {"memory_mb": reason}
