"""Monitoring API: execution logs, the metrics summary, alert rules (operators) and alert history.

Object access follows the jobs API: executions are scoped with scope_to_user (another user's is a 404).
"""

from __future__ import annotations

from typing import Any, cast

import django_filters
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsOperator, scope_to_user
from jobs.models import Execution, Job
from monitoring import services
from monitoring.models import Alert, AlertDelivery, AlertRule
from monitoring.selectors import log_excerpt, log_read, logs_query
from monitoring.selectors.autoscale import desired_workers, selector_parse
from monitoring.selectors.summary import summary_cached
from scheduler_project.api.base import ApiSchema, ApiViewMixin, service_errors
from scheduler_project.api.filters import ID_MAX, IdFilter, StrictFilterSet, UtcDateTimeFilter
from scheduler_project.dbrouter import ReplicaReadsMixin, replica_reads


def scoped_executions(user: Any) -> QuerySet[Execution]:
    """Executions the user may see: their own jobs' (operators and admins: all)."""
    return scope_to_user(Execution.objects.all(), user, owner_field="job__owner")


class LogSliceSerializer(serializers.Serializer):
    text = serializers.CharField()
    next_offset = serializers.IntegerField()
    complete = serializers.BooleanField()
    status = serializers.CharField()


class OffsetSerializer(serializers.Serializer):
    offset = serializers.IntegerField(min_value=0, max_value=2**62, default=0)


class ExecutionLogView(ApiViewMixin, APIView):
    """Follow an execution's output: call again with ?offset=next_offset until complete."""

    permission_classes = [IsAuthenticated]
    schema = ApiSchema()

    @extend_schema(
        summary="An execution's output from ?offset= (characters)",
        parameters=[OpenApiParameter("offset", int, required=False)],
        responses={200: LogSliceSerializer},
    )
    @replica_reads
    def get(self, request: Request, pk: str) -> Response:
        if not pk.isdigit() or not 0 < int(pk) <= ID_MAX:
            raise NotFound()  # "/executions/0.5/log/" is a JSON 404 like any unknown id
        params = OffsetSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        execution = get_object_or_404(scoped_executions(request.user).only("pk"), pk=int(pk))
        piece = log_read(execution_id=execution.pk, offset=params.validated_data["offset"])
        return Response(LogSliceSerializer(piece).data)


class LogFilter(StrictFilterSet):
    """Logs by job, node name, status (repeatable), created since/until and text contained in the output."""

    job = IdFilter(field_name="job_id")
    node = django_filters.CharFilter(field_name="node__name", max_length=255)
    status = django_filters.MultipleChoiceFilter(choices=Execution.Status.choices)
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")
    contains = django_filters.CharFilter(method="filter_contains", max_length=200)

    class Meta:
        model = Execution
        fields = ["job", "node", "status", "since", "until", "contains"]

    def filter_contains(self, queryset: QuerySet[Execution], name: str, value: str) -> QuerySet[Execution]:
        return logs_query(executions=queryset, contains=value) if value else queryset


class LogEntrySerializer(serializers.ModelSerializer):
    job_name = serializers.CharField(source="job.name", read_only=True)
    node = serializers.CharField(source="node.name", read_only=True, default=None, allow_null=True)
    excerpt = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = [
            "id", "job", "job_name", "node", "status", "attempt", "scheduled_for", "created_at",
            "started_at", "finished_at", "exit_code", "error", "excerpt",
        ]  # fmt: skip
        read_only_fields = fields

    def get_excerpt(self, execution: Execution) -> str:
        return log_excerpt(execution, self.context["request"].query_params.get("contains"))


class LogListView(ReplicaReadsMixin, ApiViewMixin, ListAPIView):
    """Output across executions (own jobs; operators: all), newest first, with a matching excerpt."""

    permission_classes = [IsAuthenticated]
    serializer_class = LogEntrySerializer
    filterset_class = LogFilter
    ordering_fields = ["id", "created_at", "finished_at"]
    ordering = ["-created_at", "-id"]
    schema = ApiSchema()

    def get_queryset(self) -> QuerySet[Execution]:
        return logs_query(executions=scoped_executions(self.request.user))


class MetricsSummaryView(APIView):
    """The numbers /metrics exposes, as JSON (cached a few seconds)."""

    permission_classes = [IsOperator]

    @extend_schema(
        summary="Cluster summary: jobs, executions, queues, nodes, histograms", responses={200: dict}
    )
    @replica_reads
    def get(self, request: Request) -> Response:
        return Response(summary_cached())


class DesiredWorkersSerializer(serializers.Serializer):
    labels = serializers.CharField(
        help_text="the label set: k=v,... sorted; empty for jobs without a selector"
    )
    desired = serializers.IntegerField(help_text="workers this label set needs now")
    busy = serializers.IntegerField(help_text="matching nodes holding work now")
    online = serializers.IntegerField()
    executions = serializers.IntegerField(help_text="pending + queued + running")
    pending = serializers.IntegerField()
    cpu = serializers.FloatField(help_text="cpu the executions reserve or wait for")
    memory_mb = serializers.IntegerField()
    worker_cpu = serializers.FloatField(allow_null=True, help_text="the typical worker's cpu capacity")
    worker_memory_mb = serializers.IntegerField(allow_null=True)
    worker_slots = serializers.IntegerField(allow_null=True, help_text="SCHEDULER_AUTOSCALE_WORKER_SLOTS")
    too_large = serializers.IntegerField(help_text="executions larger than the typical worker")


class AutoscaleSerializer(serializers.Serializer):
    label_sets = DesiredWorkersSerializer(many=True)


class AutoscaleQuerySerializer(serializers.Serializer):
    labels = serializers.CharField(required=False, max_length=1000)

    def validate_labels(self, value: str) -> dict[str, str]:
        try:
            return selector_parse(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class AutoscaleView(ApiViewMixin, APIView):
    """Desired workers per node label set, from pending and running demand (operators)."""

    permission_classes = [IsOperator]
    schema = ApiSchema()

    @extend_schema(
        summary="The autoscaling signal: desired workers per node label set",
        parameters=[
            OpenApiParameter(
                "labels", str, required=False, description="one label set, k=v,... (default: every one)"
            )
        ],
        responses={200: AutoscaleSerializer},
    )
    def get(self, request: Request) -> Response:
        params = AutoscaleQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        signals = desired_workers(params.validated_data.get("labels"))
        return Response(AutoscaleSerializer({"label_sets": [s.as_dict() for s in signals]}).data)


class AlertRuleSerializer(serializers.ModelSerializer):
    job = serializers.PrimaryKeyRelatedField(queryset=Job.objects.all(), required=False, allow_null=True)

    class Meta:
        model = AlertRule
        fields = [
            "id", "name", "kind", "params", "channel", "target", "enabled", "job", "secret", "created_at",
            "updated_at",
        ]  # fmt: skip
        read_only_fields = ["id", "secret", "created_at", "updated_at"]


class AlertRuleViewSet(ApiViewMixin, viewsets.ModelViewSet):
    """Alert rules: what to watch and where to send it (operators and admins)."""

    permission_classes = [IsOperator]
    serializer_class = AlertRuleSerializer
    queryset = AlertRule.objects.select_related("job")
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    ordering_fields = ["id", "name", "kind", "created_at"]
    ordering = ["name", "id"]
    schema = ApiSchema()

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        with service_errors():
            serializer.instance = services.alert_rule_create(
                actor=self.request.user, **serializer.validated_data
            )

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        with service_errors():
            rule = cast(AlertRule, serializer.instance)
            serializer.instance = services.alert_rule_update(rule=rule, **serializer.validated_data)

    def perform_destroy(self, instance: AlertRule) -> None:
        services.alert_rule_delete(rule=instance)


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertDelivery
        fields = ["id", "event", "status", "attempts", "next_attempt_at", "sent_at", "last_error"]
        read_only_fields = fields


class AlertSerializer(serializers.ModelSerializer):
    rule_name = serializers.CharField(source="rule.name", read_only=True)
    kind = serializers.CharField(source="rule.kind", read_only=True)
    deliveries = DeliverySerializer(many=True, read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id", "rule", "rule_name", "kind", "incident_key", "state", "summary", "details", "fired_at",
            "resolved_at", "deliveries",
        ]  # fmt: skip
        read_only_fields = fields


class AlertFilter(StrictFilterSet):
    rule = IdFilter(field_name="rule_id")
    state = django_filters.ChoiceFilter(choices=Alert.State.choices)
    since = UtcDateTimeFilter(field_name="fired_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["rule", "state", "since"]


class AlertViewSet(ApiViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alert history: every incident with its deliveries, newest first (operators and admins)."""

    permission_classes = [IsOperator]
    serializer_class = AlertSerializer
    queryset = Alert.objects.select_related("rule").prefetch_related("deliveries")
    filterset_class = AlertFilter
    ordering_fields = ["id", "fired_at", "resolved_at"]
    ordering = ["-fired_at", "-id"]
    schema = ApiSchema()
