"""Serializers of the jobs API: the JSON shape of jobs, executions and dead letters.

They check JSON types only; every rule about values (ranges, cron, time zones, payloads, placement) is the
jobs services' (jobs.validation), whose errors the views return as 400 with the field named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.models import DeadLetter, Execution, Job, JobSchedule
from scheduler_project.api.base import NON_FIELD
from scheduler_project.api.fields import (
    INT32_MAX,
    SMALLINT_MAX,
    Boolean,
    DateTimeText,
    Integer,
    LabelsField,
    Number,
    SizedJSONField,
    Text,
)
from scheduler_project.api.filters import ID_MAX

# API name -> jobs.schedules name (the service's), and back for error keys.
SCHEDULE_IN = {"at": "run_at", "expression": "cron_expression"}
# Service error keys -> the API field they are about.
ERROR_KEYS = {
    "cpu": "resources.cpu",
    "memory_mb": "resources.memory_mb",
    "schedule.run_at": "schedule.at",
    "schedule.cron_expression": "schedule.expression",
    "idempotency_key": "Idempotency-Key",
}
BULK_FIELD = "jobs"  # the list in a bulk request body; its errors are "jobs.<index>.<field>"


def bulk_error_key(key: str) -> str:
    """A bulk service's error key as the API names it ("3.cpu" -> "jobs.3.resources.cpu")."""
    index, _, field = key.partition(".")
    if index.isdigit():
        return f"{BULK_FIELD}.{index}.{ERROR_KEYS.get(field, field)}" if field else f"{BULK_FIELD}.{index}"
    if key == NON_FIELD:
        return BULK_FIELD  # about the list itself: empty, too long
    return ERROR_KEYS.get(key, key)


class StrictFieldsMixin:
    """Names that are no field of the serializer are a 400 naming them, not silently dropped (a client that
    sends `"memory_mb": 64` where `"resources": {"memory_mb": 64}` is meant hears of it); the read-only
    fields a GET returned may be sent back (and are ignored, as DRF does)."""

    def to_internal_value(self, data: Any) -> Any:
        fields: Any = getattr(self, "fields", {})
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in fields)
            if unknown:
                raise serializers.ValidationError(
                    {name: ["is not a field of this object"] for name in unknown}
                )
        return super().to_internal_value(data)  # type: ignore[misc]


class ScheduleSerializer(StrictFieldsMixin, serializers.Serializer):
    """When a job runs: once at a time, every N seconds, or on a cron expression in a time zone."""

    type = serializers.ChoiceField(choices=JobSchedule.Type.choices)
    at = DateTimeText(required=False, allow_null=True, help_text="once: when (ISO-8601)")
    every_seconds = Integer(
        required=False, allow_null=True, max_value=INT32_MAX, help_text="interval: seconds between runs"
    )
    expression = Text(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=120,
        help_text="cron: 'minute hour day-of-month month day-of-week'",
    )
    timezone = Text(
        required=False, allow_null=True, max_length=64, help_text="IANA zone for cron and naive times; UTC"
    )
    start_at = DateTimeText(required=False, allow_null=True, help_text="no run before this")
    end_at = DateTimeText(required=False, allow_null=True, help_text="no run after this")
    max_runs = Integer(
        required=False, allow_null=True, max_value=INT32_MAX, help_text="stop after this many runs"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A schedule is replaced whole (PATCH too): without its type it would read as "no schedule".
        if "type" not in attrs:
            raise serializers.ValidationError({"type": ["This field is required."]})
        return attrs

    def to_representation(self, instance: JobSchedule) -> dict[str, Any]:
        return {
            "type": instance.type,
            "at": _iso(instance.run_at),
            "every_seconds": instance.every_seconds,
            "expression": instance.cron_expression or None,
            "timezone": instance.timezone,
            "start_at": _iso(instance.start_at),
            "end_at": _iso(instance.end_at),
            "max_runs": instance.max_runs,
        }


_DATETIME = serializers.DateTimeField()  # one instance: building a field per value is most of a job's render


def _iso(value: Any) -> str | None:
    return _DATETIME.to_representation(value) if value else None


class ResourcesSerializer(StrictFieldsMixin, serializers.Serializer):
    """The CPU and memory one execution reserves on its node."""

    cpu = Number(max_digits=7, decimal_places=3, required=False, help_text="CPUs, e.g. 0.5")
    memory_mb = Integer(required=False, max_value=INT32_MAX, help_text="MiB")


class LastExecutionSerializer(serializers.Serializer):
    """The job's most recent execution, in brief."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Execution.Status.choices)
    attempt = serializers.IntegerField()
    scheduled_for = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class JobSerializer(StrictFieldsMixin, serializers.Serializer):
    """A job as the API reads and writes it (owner, status and times are read-only; unknown names are a
    400)."""

    id = serializers.IntegerField(read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    name = Text(max_length=200)
    description = Text(required=False, allow_blank=True, max_length=10000)
    kind = serializers.ChoiceField(choices=Job.Kind.choices)
    payload = SizedJSONField(
        help_text=(
            "per kind: shell {command: [argv]}, http {method, url, ...}, python {handler, kwargs}, container"
            " {image, command: [argv], env, workdir, network: none|bridge, pull: never|if-missing, user}"
        )
    )
    schedule = ScheduleSerializer(required=False, allow_null=True, help_text="null: runs only when run")
    priority = Integer(required=False, max_value=SMALLINT_MAX, help_text="0 (low) - 9")
    resources = ResourcesSerializer(required=False, source="*")
    node_selector = LabelsField(required=False, allow_null=True, help_text="labels a node must have")
    timeout_seconds = Integer(required=False, allow_null=True, max_value=INT32_MAX)
    max_retries = Integer(required=False, max_value=SMALLINT_MAX)
    retry_backoff_seconds = Integer(required=False, max_value=INT32_MAX)
    retry_backoff_max_seconds = Integer(required=False, max_value=INT32_MAX)
    retry_jitter = Boolean(required=False)
    concurrency_policy = serializers.ChoiceField(choices=Job.ConcurrencyPolicy.choices, required=False)
    misfire_policy = serializers.ChoiceField(choices=Job.MisfirePolicy.choices, required=False)
    status = serializers.ChoiceField(choices=Job.Status.choices, read_only=True)
    next_run_at = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)
    last_execution = serializers.SerializerMethodField()

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_next_run_at(self, job: Job) -> str | None:
        schedule = _schedule_of(job)
        if schedule is None or job.status != Job.Status.ACTIVE:
            return None
        return _iso(schedule.next_run_at)

    @extend_schema_field(LastExecutionSerializer(allow_null=True))
    def get_last_execution(self, job: Job) -> dict[str, Any] | None:
        # Annotated by the view's queryset (one subquery), so a page of jobs costs one query.
        return getattr(job, "last_execution_data", None)

    def service_kwargs(self) -> dict[str, Any]:
        """The validated input as keyword arguments of job_create / job_update."""
        return job_service_kwargs(self.validated_data)


def job_service_kwargs(validated: Mapping[str, Any]) -> dict[str, Any]:
    """One job's validated input as keyword arguments of job_create / job_update (or a bulk item)."""
    data = dict(validated)
    if "schedule" in data and data["schedule"] is not None:
        data["schedule"] = {SCHEDULE_IN.get(k, k): v for k, v in data["schedule"].items()}
    return data


def _schedule_of(job: Job) -> JobSchedule | None:
    try:
        return job.schedule
    except JobSchedule.DoesNotExist:
        return None


class _JobItems(serializers.ListField):
    """The jobs of a bulk request, each checked as POST jobs/ checks one; a bad one leaves None.

    Its errors are kept (item_errors), not raised, so that the service can still check the other items.
    """

    def run_child_validation(self, data: list[Any]) -> list[Any]:
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)  # before checking a thousand and one
        items: list[Any] = []
        self.item_errors: dict[str, Any] = {}
        for index, item in enumerate(data):
            try:
                items.append(job_service_kwargs(self.child.run_validation(item)))
            except serializers.ValidationError as exc:
                items.append(None)
                self.item_errors[str(index)] = exc.detail
        return items


class JobBulkSerializer(serializers.Serializer):
    """POST jobs/bulk/: {"jobs": [job, ...]}, 1 to SCHEDULER_BULK_MAX_ITEMS jobs as POST jobs/ takes them."""

    jobs = _JobItems(child=JobSerializer(), min_length=1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = settings.SCHEDULER_BULK_MAX_ITEMS
        self.fields[BULK_FIELD] = _JobItems(child=JobSerializer(), min_length=1, max_length=limit)

    def items_and_errors(self) -> tuple[list[dict[str, Any] | None], dict[str, Any]]:
        """Each item's job_create arguments (None where its JSON types are wrong), and those items' errors."""
        field = self.fields[BULK_FIELD]
        return self.validated_data[BULK_FIELD], getattr(field, "item_errors", {})


class JobBulkResultSerializer(serializers.Serializer):
    """The jobs of a bulk submission, in the order of the request's items."""

    jobs = JobSerializer(many=True, read_only=True)


class JobBulkRunSerializer(serializers.Serializer):
    """POST jobs/bulk-run/: {"jobs": [id, ...]}, 1 to SCHEDULER_BULK_MAX_ITEMS ids of jobs to run now."""

    jobs = serializers.ListField(child=Integer(min_value=1, max_value=ID_MAX), min_length=1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = settings.SCHEDULER_BULK_MAX_ITEMS
        self.fields[BULK_FIELD] = serializers.ListField(
            child=Integer(min_value=1, max_value=ID_MAX), min_length=1, max_length=limit
        )


class ExecutionSerializer(serializers.ModelSerializer):
    """One attempt of one firing of a job (read-only: executions change only through actions)."""

    job_name = serializers.CharField(source="job.name", read_only=True)
    node = serializers.CharField(source="node.name", read_only=True, allow_null=True, default=None)
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    end_cause = serializers.ChoiceField(
        choices=Execution.EndCause.choices,
        allow_blank=True,
        read_only=True,
        help_text="why the run ended (empty while it runs, or when nothing ran): oom_killed is the kernel's "
        "out-of-memory kill, told apart from timed_out and cancelled",
    )

    class Meta:
        model = Execution
        fields = [
            "id",
            "job",
            "job_name",
            "scheduled_for",
            "attempt",
            "trigger",
            "status",
            "node",
            "pending_reason",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            "exit_code",
            "error",
            "result",
            "progress",
            "end_cause",
            "memory_peak_bytes",
            "cpu_seconds",
            "output_truncated",
            "retry_of",
            "replay_of",
        ]
        read_only_fields = fields


class ExecutionDetailSerializer(ExecutionSerializer):
    """An execution with the tail of its output (the live log is at executions/{id}/log/)."""

    class Meta(ExecutionSerializer.Meta):
        fields = [*ExecutionSerializer.Meta.fields, "output"]
        read_only_fields = fields


class ExecutionBulkSerializer(serializers.Serializer):
    """The executions a bulk run started, in the order of the request's job ids."""

    executions = ExecutionDetailSerializer(many=True, read_only=True)


class DeadLetterSerializer(serializers.ModelSerializer):
    """An execution whose retries ran out, kept for inspection and replay."""

    job_name = serializers.CharField(source="job.name", read_only=True)
    attempts = serializers.IntegerField(source="execution.attempt", read_only=True)
    execution_status = serializers.CharField(source="execution.status", read_only=True)

    class Meta:
        model = DeadLetter
        fields = [
            "id",
            "job",
            "job_name",
            "execution",
            "execution_status",
            "attempts",
            "error",
            "status",
            "replay_count",
            "last_replayed_at",
            "created_at",
        ]
        read_only_fields = fields
