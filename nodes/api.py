"""The nodes REST API: nodes (read; operators register and drain), cluster usage, allocations.

Views translate HTTP to nodes.services / nodes.selectors calls; the JSON plumbing (errors, body limits,
pagination, documented error responses) is the shared kit in scheduler_project.api.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsOperatorOrReadOnly, scope_to_user
from nodes import selectors, services
from nodes.models import Node, ResourceAllocation
from scheduler_project.api.base import ApiSchema, ApiViewMixin, Conflict, service_errors
from scheduler_project.api.fields import INT32_MAX, Integer, LabelsField, Number, Text
from scheduler_project.api.filters import IdFilter, StrictBooleanFilter, StrictFilterSet
from scheduler_project.dbrouter import ReplicaReadsMixin

# What PATCH nodes/{id}/ may set: drain, or back online from draining (offline is the reaper's).
NODE_TARGET_STATUSES = [(Node.Status.ONLINE.value, "online"), (Node.Status.DRAINING.value, "draining")]

# --- serializers ------------------------------------------------------------------------------


class NodeSerializer(serializers.ModelSerializer):
    """A node (one celery worker) with its capacity, what is reserved on it and its live usage."""

    # Sums of the active allocation rows (the record; the node's counters are repaired from them).
    cpu_allocated = serializers.DecimalField(
        max_digits=9, decimal_places=3, coerce_to_string=False, read_only=True, source="cpu_reserved"
    )
    memory_mb_allocated = serializers.IntegerField(read_only=True, source="memory_mb_reserved")
    running = serializers.IntegerField(read_only=True)
    name = Text(max_length=255, help_text="the celery worker's hostname, NAME@HOST")
    hostname = Text(max_length=255, required=False, help_text="default: the HOST part of name")
    ip_address = serializers.IPAddressField(required=False, allow_null=True)
    cpu_capacity = Number(max_digits=7, decimal_places=3)
    memory_mb_capacity = Integer(max_value=INT32_MAX)
    labels = LabelsField(required=False)
    version = Text(max_length=64, required=False)

    class Meta:
        model = Node
        fields = [
            "id", "name", "hostname", "ip_address", "cpu_capacity", "memory_mb_capacity", "labels",
            "version", "status", "registered_at", "last_heartbeat_at", "cpu_percent", "memory_used_mb",
            "running_count", "cpu_allocated", "memory_mb_allocated", "running",
        ]  # fmt: skip
        read_only_fields = [
            "id", "status", "registered_at", "last_heartbeat_at", "cpu_percent", "memory_used_mb",
            "running_count",
        ]  # fmt: skip


class NodeStatusSerializer(serializers.Serializer):
    """What an operator may change on a node: drain it, or bring a draining node back online."""

    status = serializers.ChoiceField(choices=NODE_TARGET_STATUSES)


class UsageSerializer(serializers.Serializer):
    """Capacity, reserved (allocated) and used resources."""

    cpu_capacity = serializers.DecimalField(max_digits=12, decimal_places=3, coerce_to_string=False)
    cpu_allocated = serializers.DecimalField(max_digits=12, decimal_places=3, coerce_to_string=False)
    cpu_free = serializers.DecimalField(max_digits=12, decimal_places=3, coerce_to_string=False)
    cpu_used = serializers.FloatField(help_text="cores in use, from the last heartbeats")
    memory_mb_capacity = serializers.IntegerField()
    memory_mb_allocated = serializers.IntegerField()
    memory_mb_free = serializers.IntegerField()
    memory_mb_used = serializers.IntegerField()
    running = serializers.IntegerField()


class NodeUsageSerializer(UsageSerializer):
    """One node's usage."""

    name = serializers.CharField()
    status = serializers.ChoiceField(choices=Node.Status.choices)
    labels = serializers.DictField(child=serializers.CharField())
    last_heartbeat_at = serializers.DateTimeField(allow_null=True)


class ClusterSerializer(UsageSerializer):
    """Totals over online and draining nodes, and node counts by status."""

    nodes_by_status = serializers.DictField(child=serializers.IntegerField())


class ClusterUsageSerializer(serializers.Serializer):
    """The cluster's totals and each node's usage."""

    cluster = ClusterSerializer()
    nodes = NodeUsageSerializer(many=True)


class AllocationSerializer(serializers.ModelSerializer):
    """CPU and memory reserved for one execution on one node."""

    node_name = serializers.CharField(source="node.name", read_only=True)
    job = serializers.IntegerField(source="execution.job_id", read_only=True)
    cpu = serializers.DecimalField(max_digits=7, decimal_places=3, coerce_to_string=False, read_only=True)
    active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ResourceAllocation
        fields = [
            "id", "node", "node_name", "execution", "job", "cpu", "memory_mb", "allocated_at", "released_at",
            "active",
        ]  # fmt: skip
        read_only_fields = fields


# --- filters ----------------------------------------------------------------------------------


class NodeFilter(StrictFilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Node.Status.choices)

    class Meta:
        model = Node
        fields = ["status"]


class AllocationFilter(StrictFilterSet):
    """Allocations by node (id or name), execution, and whether still held (?active=true)."""

    node = IdFilter(field_name="node_id")
    node_name = django_filters.CharFilter(field_name="node__name", max_length=255)
    execution = IdFilter(field_name="execution_id")
    active = StrictBooleanFilter(field_name="released_at", lookup_expr="isnull")

    class Meta:
        model = ResourceAllocation
        fields = ["node", "node_name", "execution", "active"]


# --- views ------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List nodes with capacity, allocated and live usage"),
    retrieve=extend_schema(summary="A node"),
    create=extend_schema(
        summary="Register a node (operators); an existing name is re-registered (200)",
        responses={201: NodeSerializer, 200: NodeSerializer},
    ),
    partial_update=extend_schema(
        summary="Drain a node or bring a draining one back online (operators)",
        request=NodeStatusSerializer,
        responses={200: NodeSerializer, 409: OpenApiResponse(dict, "An offline node cannot be changed")},
    ),
)
class NodeViewSet(
    ReplicaReadsMixin,
    ApiViewMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Execution nodes: any user reads; operators register, drain and undrain."""

    serializer_class = NodeSerializer
    permission_classes = [IsOperatorOrReadOnly]
    filterset_class = NodeFilter
    ordering_fields = ["id", "name", "status", "registered_at", "last_heartbeat_at"]
    ordering = ["name"]
    http_method_names = ["get", "post", "patch", "head", "options"]
    schema = ApiSchema()

    def get_queryset(self) -> QuerySet[Node]:
        return selectors.nodes_with_usage()

    def _node_response(self, name: str, code: int = status.HTTP_200_OK) -> Response:
        node = self.get_queryset().get(name=name)
        return Response(NodeSerializer(node).data, status=code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        existed = Node.objects.filter(name=data["name"]).exists()
        with service_errors():
            node = services.node_register(
                name=data["name"],
                hostname=data.get("hostname") or data["name"].partition("@")[2],
                ip_address=data.get("ip_address"),
                cpu_capacity=Decimal(data["cpu_capacity"]),
                memory_mb_capacity=data["memory_mb_capacity"],
                labels=data.get("labels") or {},
                version=data.get("version", ""),
            )
        return self._node_response(node.name, status.HTTP_200_OK if existed else status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        node = self.get_object()
        serializer = NodeStatusSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wanted = serializer.validated_data["status"]
        if wanted == Node.Status.DRAINING:
            services.node_drain(name=node.name)
        else:
            services.node_undrain(name=node.name)
        current = Node.objects.values_list("status", flat=True).get(pk=node.pk)
        if current != wanted:
            raise Conflict(f"node {node.name} is {current}; it comes back online when its worker heartbeats")
        return self._node_response(node.name)


class ClusterUsageView(ApiViewMixin, APIView):
    """Cluster and per-node capacity, allocated (reserved) and used (heartbeat) resources."""

    permission_classes = [IsAuthenticated]
    schema = ApiSchema()

    @extend_schema(summary="Cluster and per-node resource usage", responses=ClusterUsageSerializer)
    def get(self, request: Request) -> Response:
        usage = selectors.cluster_usage()
        cluster = {
            "cpu_capacity": usage.cpu_capacity,
            "cpu_allocated": usage.cpu_allocated,
            "cpu_free": usage.cpu_capacity - usage.cpu_allocated,
            "cpu_used": usage.cpu_used,
            "memory_mb_capacity": usage.memory_mb_capacity,
            "memory_mb_allocated": usage.memory_mb_allocated,
            "memory_mb_free": usage.memory_mb_capacity - usage.memory_mb_allocated,
            "memory_mb_used": usage.memory_mb_used,
            "running": usage.running,
            "nodes_by_status": usage.nodes_by_status,
        }
        data = ClusterUsageSerializer({"cluster": cluster, "nodes": usage.nodes}).data
        return Response(data)


@extend_schema_view(
    list=extend_schema(summary="List resource allocations (own executions'; operators: all)"),
    retrieve=extend_schema(summary="A resource allocation"),
)
class AllocationViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """Resource allocations, newest first; ?active=true for those still held."""

    serializer_class = AllocationSerializer
    permission_classes = [IsAuthenticated]
    filterset_class = AllocationFilter
    ordering_fields = ["id", "allocated_at", "released_at"]
    ordering = ["-allocated_at", "-id"]
    schema = ApiSchema()

    def get_queryset(self) -> QuerySet[ResourceAllocation]:
        return scope_to_user(
            selectors.allocation_history(), self.request.user, owner_field="execution__job__owner"
        )
