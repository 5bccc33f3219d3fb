"""Views of the jobs API: HTTP in, one jobs service call, JSON out. No rules live here.

Object access is by scoping (accounts.permissions.scope_to_user): another user's job, execution or dead
letter is not in the queryset, so every verb on it is a 404 and no list contains it. Role checks
(CanSubmit) run before any lookup, so a viewer's write is a 403 whatever the id.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError
from django.db.models import OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import JSONObject
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from accounts.permissions import CanSubmit, scope_to_user
from jobs import services
from jobs.models import DeadLetter, Execution, Job
from scheduler_project.api.base import ApiSchema, ApiViewMixin, Conflict, service_errors
from scheduler_project.dbrouter import ReplicaReadsMixin

from .filters import DeadLetterFilter, ExecutionFilter, JobFilter
from .pagination import CappedCountPagination
from .serializers import (
    BULK_FIELD,
    ERROR_KEYS,
    DeadLetterSerializer,
    ExecutionBulkSerializer,
    ExecutionDetailSerializer,
    ExecutionSerializer,
    JobBulkResultSerializer,
    JobBulkRunSerializer,
    JobBulkSerializer,
    JobSerializer,
    bulk_error_key,
)

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Repeat a create safely: the same key (per user) returns the job it created, with 200.",
)
BULK_IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Repeat a bulk create safely: the same key (per user) returns the jobs it created, with 200.",
)
_CONFLICT = OpenApiResponse(description="Not in a state this action applies to", response=dict)


def _last_execution() -> Subquery:
    latest = (
        Execution.objects.filter(job=OuterRef("pk"))
        .order_by("-pk")
        .values(
            data=JSONObject(
                id="id",
                status="status",
                attempt="attempt",
                scheduled_for="scheduled_for",
                finished_at="finished_at",
            )
        )[:1]
    )
    return Subquery(latest)


@extend_schema_view(
    list=extend_schema(summary="List jobs (own; operators: all). Archived ones only with ?status=archived"),
    retrieve=extend_schema(summary="A job"),
    create=extend_schema(
        summary="Submit a job",
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: JobSerializer, 200: OpenApiResponse(JobSerializer, "Idempotent repeat")},
    ),
    partial_update=extend_schema(summary="Change a job's fields or its schedule (validated like create)"),
    destroy=extend_schema(summary="Delete (archive) a job: nothing fires; its history stays"),
)
class JobViewSet(
    ReplicaReadsMixin,
    ApiViewMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Jobs: submit, read, change, pause, resume, run now, delete."""

    serializer_class = JobSerializer
    permission_classes = [CanSubmit]
    filterset_class = JobFilter
    ordering_fields = ["id", "name", "priority", "status", "created_at", "updated_at"]
    ordering = ["-created_at", "-id"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    schema = ApiSchema()

    def get_queryset(self) -> QuerySet[Job]:
        jobs = Job.objects.select_related("owner", "schedule").annotate(last_execution_data=_last_execution())
        jobs = scope_to_user(jobs, self.request.user)
        if self.action == "list" and "status" not in self.request.query_params:
            jobs = jobs.exclude(status=Job.Status.ARCHIVED)
        return jobs

    def _job_response(self, job: Job, code: int = status.HTTP_200_OK) -> Response:
        data = JobSerializer(self._fresh(job), context=self.get_serializer_context()).data
        return Response(data, status=code)

    def _fresh_all(self, jobs: list[Job]) -> list[Job]:
        fresh = (
            Job.objects.select_related("owner", "schedule")
            .annotate(last_execution_data=_last_execution())
            .in_bulk([job.pk for job in jobs])
        )
        return [fresh[job.pk] for job in jobs]

    def _fresh(self, job: Job) -> Job:
        # Re-read through the annotated queryset (schedule, last execution) after a service changed it.
        return (
            Job.objects.select_related("owner", "schedule")
            .annotate(last_execution_data=_last_execution())
            .get(pk=job.pk)
        )

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        owner: Any = request.user
        key = request.headers.get("Idempotency-Key", "").strip()
        if key:
            existing = Job.objects.filter(owner=owner, idempotency_key=key).first()
            if existing is not None:
                return self._job_response(existing)
        try:
            with service_errors(ERROR_KEYS, denied_field="kind"):
                job = services.job_create(
                    owner=owner, idempotency_key=key, **self._service_kwargs(serializer)
                )
        except IntegrityError:
            # A concurrent request with the same key won the unique constraint: its job is the answer.
            existing = Job.objects.filter(owner=owner, idempotency_key=key).first() if key else None
            if existing is None:
                raise
            return self._job_response(existing)
        return self._job_response(job, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Submit up to SCHEDULER_BULK_MAX_ITEMS jobs at once: all are created, or none",
        parameters=[BULK_IDEMPOTENCY_HEADER],
        request=JobBulkSerializer,
        responses={
            201: JobBulkResultSerializer,
            200: OpenApiResponse(JobBulkResultSerializer, "Idempotent repeat"),
        },
    )
    @action(detail=False, methods=["post"], url_path="bulk")
    def bulk(self, request: Request) -> Response:
        serializer = JobBulkSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        items, type_errors = serializer.items_and_errors()
        key = request.headers.get("Idempotency-Key", "").strip()
        with service_errors(bulk_error_key):
            if type_errors:
                # Some items have wrong JSON types: the answer still names what is wrong with the others.
                found = services.jobs_bulk_errors(items=items)
                raise exceptions.ValidationError(
                    {BULK_FIELD: type_errors, **{bulk_error_key(k): v for k, v in found.items()}}
                )
            result = services.jobs_create_bulk(owner=request.user, items=items, idempotency_key=key)
        # New jobs are answered as created (schedules loaded, no execution yet); an earlier batch is re-read.
        jobs = result.jobs if result.created else self._fresh_all(result.jobs)
        data = JobBulkResultSerializer({"jobs": jobs}, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)

    @extend_schema(
        summary="Run up to SCHEDULER_BULK_MAX_ITEMS jobs now: an execution for each, or none",
        request=JobBulkRunSerializer,
        responses={201: ExecutionBulkSerializer},
    )
    @action(detail=False, methods=["post"], url_path="bulk-run")
    def bulk_run(self, request: Request) -> Response:
        serializer = JobBulkRunSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors(bulk_error_key):
            executions = services.jobs_trigger_bulk(
                actor=request.user, jobs=serializer.validated_data["jobs"]
            )
        ids = [execution.pk for execution in executions]
        fresh = Execution.objects.select_related("job", "node").in_bulk(ids)
        data = ExecutionBulkSerializer({"executions": [fresh[pk] for pk in ids]}).data
        return Response(data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        job = self.get_object()
        serializer = self.get_serializer(job, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        with service_errors(ERROR_KEYS, denied_field="kind"):
            job = services.job_update(job=job, actor=request.user, **self._service_kwargs(serializer))
        return self._job_response(job)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        job = self.get_object()
        services.job_delete(job=job)  # archiving an archived job is a no-op: DELETE is idempotent
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Run a job now: the new execution",
        request=None,
        responses={201: ExecutionDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        with service_errors():
            # Running a shell job needs jobs.run_shell now, not only when it was created.
            services.shell_permission_check(user=request.user, kind=job.kind, payload=job.payload)
            execution = services.job_trigger(job=job)
        execution = Execution.objects.select_related("job", "node").get(pk=execution.pk)
        return Response(ExecutionDetailSerializer(execution).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Pause an active job (idempotent)",
        request=None,
        responses={200: JobSerializer, 409: _CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        if not services.job_pause(job=job):
            self._require_status(job, Job.Status.PAUSED, "only an active job can be paused")
        return self._job_response(job)

    @extend_schema(
        summary="Resume a paused job (idempotent)",
        request=None,
        responses={200: JobSerializer, 409: _CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        if not services.job_resume(job=job):
            self._require_status(job, Job.Status.ACTIVE, "only a paused job can be resumed")
        return self._job_response(job)

    def _require_status(self, job: Job, wanted: str, why: str) -> None:
        # The service changed nothing: fine if the job is already there (idempotent), else a conflict.
        current = Job.objects.values_list("status", flat=True).get(pk=job.pk)
        if current != wanted:
            raise Conflict(f"job {job.pk} is {current}; {why}")

    @staticmethod
    def _service_kwargs(serializer: BaseSerializer) -> dict[str, Any]:
        assert isinstance(serializer, JobSerializer)  # noqa: S101 - narrows the type for mypy
        return serializer.service_kwargs()


@extend_schema_view(
    list=extend_schema(summary="List executions (of own jobs; operators: all)"),
    retrieve=extend_schema(summary="An execution, with the tail of its output"),
)
class ExecutionViewSet(ReplicaReadsMixin, ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """Executions: read, filter, cancel. Their live log is executions/{id}/log/ (monitoring)."""

    permission_classes = [CanSubmit]
    filterset_class = ExecutionFilter
    pagination_class = CappedCountPagination  # history is large: no COUNT(*) of all of it per page
    ordering_fields = ["id", "created_at", "scheduled_for", "started_at", "finished_at", "status"]
    ordering = ["-created_at", "-id"]
    schema = ApiSchema()

    def get_queryset(self) -> QuerySet[Execution]:
        executions = Execution.objects.select_related("job", "node")
        if self.action == "list":
            executions = executions.defer("output")  # the tail can be large; the list does not show it
        return scope_to_user(executions, self.request.user, owner_field="job__owner")

    def get_serializer_class(self) -> type[BaseSerializer]:
        return ExecutionSerializer if self.action == "list" else ExecutionDetailSerializer

    @extend_schema(
        summary="Cancel a pending, queued or running execution (idempotent)",
        request=None,
        responses={200: ExecutionDetailSerializer, 409: _CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        execution = self.get_object()
        cancelled = services.execution_cancel(
            execution_id=execution.pk, reason=f"cancelled by {request.user.get_username()}"
        )
        execution.refresh_from_db()
        if not cancelled and execution.status != Execution.Status.CANCELLED:
            raise Conflict(f"execution {execution.pk} is {execution.status}; it cannot be cancelled")
        return Response(ExecutionDetailSerializer(execution).data)


@extend_schema_view(
    list=extend_schema(summary="List dead letters (of own jobs; operators: all)"),
    retrieve=extend_schema(summary="A dead letter"),
)
class DeadLetterViewSet(ReplicaReadsMixin, ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """Dead letters: executions whose retries ran out; replay runs the job again."""

    serializer_class = DeadLetterSerializer
    permission_classes = [CanSubmit]
    filterset_class = DeadLetterFilter
    pagination_class = CappedCountPagination  # dead letters grow with the executions' history
    ordering_fields = ["id", "created_at", "status", "replay_count"]
    ordering = ["-created_at", "-id"]
    schema = ApiSchema()

    def get_queryset(self) -> QuerySet[DeadLetter]:
        # The executions by a second query on their ids (50 index lookups), not a join: joined, the
        # planner hashes the whole execution history before the page's LIMIT applies.
        executions = Prefetch("execution", queryset=Execution.objects.only("id", "status", "attempt"))
        letters = DeadLetter.objects.select_related("job").prefetch_related(executions)
        return scope_to_user(letters, self.request.user, owner_field="job__owner")

    @extend_schema(
        summary="Replay: a fresh execution of the dead one's job",
        request=None,
        responses={201: ExecutionDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        letter = self.get_object()
        with service_errors():
            execution = services.dead_letter_replay(dead_letter_id=letter.pk)
        execution = Execution.objects.select_related("job", "node").get(pk=execution.pk)
        return Response(ExecutionDetailSerializer(execution).data, status=status.HTTP_201_CREATED)
