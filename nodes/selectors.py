"""Reads on nodes: capacity, allocated and used resources per node and for the cluster, allocation history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import (
    Count,
    DecimalField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce

from nodes.models import Node, ResourceAllocation


def _active_allocations_sum(field: str, output: DecimalField | IntegerField) -> Coalesce:
    total = (
        ResourceAllocation.objects.filter(node=OuterRef("pk"), released_at__isnull=True)
        .order_by()
        .values("node")
        .annotate(total=Sum(field))
        .values("total")
    )
    return Coalesce(Subquery(total, output_field=output), Value(0), output_field=output)


def _running_count() -> Coalesce:
    # The executions model through the relation the jobs app defines (Execution.node): no import of it.
    execution: Any = Node._meta.get_field("executions").related_model
    running = (
        execution.objects.filter(node=OuterRef("pk"), status="running")
        .order_by()
        .values("node")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(running, output_field=IntegerField()), Value(0))


def nodes_with_usage(*, status: str | None = None) -> QuerySet[Node]:
    """Nodes annotated with cpu_reserved and memory_mb_reserved (sums of the active allocations, the
    record the counters are repaired from) and running (executions running on them)."""
    nodes = Node.objects.annotate(
        cpu_reserved=_active_allocations_sum("cpu", DecimalField(max_digits=9, decimal_places=3)),
        memory_mb_reserved=_active_allocations_sum("memory_mb", IntegerField()),
        running=_running_count(),
    )
    return nodes.filter(status=status) if status else nodes


@dataclass(frozen=True)
class NodeUsage:
    """Capacity, reservations and live usage of one node."""

    name: str
    status: str
    labels: dict
    last_heartbeat_at: datetime | None
    cpu_capacity: Decimal
    cpu_allocated: Decimal
    cpu_used: float  # cores in use by the worker's process tree, from the last heartbeat
    memory_mb_capacity: int
    memory_mb_allocated: int
    memory_mb_used: int
    running: int

    @property
    def cpu_free(self) -> Decimal:
        return self.cpu_capacity - self.cpu_allocated

    @property
    def memory_mb_free(self) -> int:
        return self.memory_mb_capacity - self.memory_mb_allocated


@dataclass(frozen=True)
class ClusterUsage:
    """Totals over the nodes that take or finish work (online and draining), and the per-node rows."""

    nodes: list[NodeUsage]
    nodes_by_status: dict[str, int]
    cpu_capacity: Decimal
    cpu_allocated: Decimal
    cpu_used: float
    memory_mb_capacity: int
    memory_mb_allocated: int
    memory_mb_used: int
    running: int


def node_usage(node: Node) -> NodeUsage:
    """One annotated node (from nodes_with_usage) as a NodeUsage."""
    return NodeUsage(
        name=node.name,
        status=node.status,
        labels=node.labels,
        last_heartbeat_at=node.last_heartbeat_at,
        cpu_capacity=node.cpu_capacity,
        cpu_allocated=node.cpu_reserved,  # type: ignore[attr-defined]
        cpu_used=round(node.cpu_percent / 100 * float(node.cpu_capacity), 3),
        memory_mb_capacity=node.memory_mb_capacity,
        memory_mb_allocated=node.memory_mb_reserved,  # type: ignore[attr-defined]
        memory_mb_used=node.memory_used_mb,
        running=node.running,  # type: ignore[attr-defined]
    )


def cluster_usage() -> ClusterUsage:
    """Per-node usage and cluster totals; offline nodes are listed but not counted in the totals."""
    rows = [node_usage(node) for node in nodes_with_usage()]
    live = [row for row in rows if row.status != Node.Status.OFFLINE]
    by_status = {status: 0 for status in Node.Status.values}
    for row in rows:
        by_status[row.status] += 1
    return ClusterUsage(
        nodes=rows,
        nodes_by_status=by_status,
        cpu_capacity=sum((r.cpu_capacity for r in live), Decimal(0)),
        cpu_allocated=sum((r.cpu_allocated for r in live), Decimal(0)),
        cpu_used=round(sum(r.cpu_used for r in live), 3),
        memory_mb_capacity=sum(r.memory_mb_capacity for r in live),
        memory_mb_allocated=sum(r.memory_mb_allocated for r in live),
        memory_mb_used=sum(r.memory_mb_used for r in live),
        running=sum(r.running for r in rows),
    )


def allocation_history(
    *, node_name: str | None = None, since: datetime | None = None, active: bool | None = None
) -> QuerySet[ResourceAllocation]:
    """Allocations newest first; optionally of one node, overlapping [since, now], active or released."""
    allocations = ResourceAllocation.objects.select_related("node", "execution__job")
    if node_name:
        allocations = allocations.filter(node__name=node_name)
    if since:
        allocations = allocations.filter(Q(released_at__isnull=True) | Q(released_at__gte=since))
    if active is not None:
        allocations = allocations.filter(released_at__isnull=active)
    return allocations.order_by("-allocated_at")


def node_overcommit_peaks(*, node_name: str) -> list[tuple[datetime, Decimal, int]]:
    """Instants at which the node's overlapping allocations exceeded its capacity (empty when never)."""
    node = Node.objects.get(name=node_name)
    events: list[tuple[datetime, int, Decimal, int]] = []
    for alloc in ResourceAllocation.objects.filter(node=node).only(
        "cpu", "memory_mb", "allocated_at", "released_at"
    ):
        events.append((alloc.allocated_at, 1, alloc.cpu, alloc.memory_mb))
        if alloc.released_at is not None:
            events.append((alloc.released_at, 0, -alloc.cpu, -alloc.memory_mb))
    cpu, memory_mb, peaks = Decimal(0), 0, []
    # At equal timestamps releases (0) come before allocations (1): capacity freed can be reused at once.
    for at, _kind, d_cpu, d_mem in sorted(events, key=lambda e: (e[0], e[1])):
        cpu, memory_mb = cpu + d_cpu, memory_mb + d_mem
        if cpu > node.cpu_capacity or memory_mb > node.memory_mb_capacity:
            peaks.append((at, cpu, memory_mb))
    return peaks
