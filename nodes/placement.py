"""Resource-aware placement: pick an online node whose labels and free capacity fit, and reserve it.

Policy: a `PlacementPolicy` subclass chooses among the nodes that fit (one hook, `choose`). The default,
`LeastLoadedPolicy`, takes the node with the largest share of its CPU still free (ties: largest share of
memory free, then name), which spreads work evenly over nodes of different sizes. Another policy is
selected with the optional setting SCHEDULER_PLACEMENT_POLICY (a dotted path to the class).

Safety: `allocation_reserve` locks the candidate node rows (SELECT ... FOR UPDATE, in primary-key order so
two placements never deadlock) before it sums their active allocations, so two concurrent placements on
the same node are serialised and a node is never over-committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Max, Sum
from django.utils import timezone
from django.utils.module_loading import import_string

from nodes.models import Node, ResourceAllocation

if TYPE_CHECKING:
    from jobs.models import Execution, Job

REASON_MAX_LENGTH = 255


@dataclass(frozen=True)
class Placement:
    """The outcome of a placement attempt."""

    allocation: ResourceAllocation | None
    reason: str  # "" when placed; otherwise why nothing fits, for Execution.pending_reason


@dataclass(frozen=True)
class Candidate:
    """An online node whose labels match, with what is still free on it."""

    node: Node
    free_cpu: Decimal
    free_memory_mb: int

    @property
    def free_cpu_share(self) -> Decimal:
        return self.free_cpu / self.node.cpu_capacity if self.node.cpu_capacity else Decimal(0)

    @property
    def free_memory_share(self) -> float:
        cap = self.node.memory_mb_capacity
        return self.free_memory_mb / cap if cap else 0.0


class PlacementPolicy:
    """Chooses one node among candidates that all fit the job; subclass and override `choose`."""

    def choose(self, candidates: Sequence[Candidate], job: Job) -> Candidate:
        raise NotImplementedError


class LeastLoadedPolicy(PlacementPolicy):
    """The node with the largest free CPU share, then the largest free memory share, then by name."""

    def choose(self, candidates: Sequence[Candidate], job: Job) -> Candidate:
        return min(candidates, key=lambda c: (-c.free_cpu_share, -c.free_memory_share, c.node.name))


@cache
def _policy_class(path: str) -> type[PlacementPolicy]:
    return import_string(path)


def placement_policy() -> PlacementPolicy:
    """The configured placement policy (LeastLoadedPolicy unless SCHEDULER_PLACEMENT_POLICY names another)."""
    path = getattr(settings, "SCHEDULER_PLACEMENT_POLICY", "nodes.placement.LeastLoadedPolicy")
    return _policy_class(path)()


def format_labels(labels: Mapping[str, Any]) -> str:
    """region=eu,gpu=no (sorted) for messages."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _truncate(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX_LENGTH else reason[: REASON_MAX_LENGTH - 3] + "..."


def _with_labels(selector: Mapping[str, Any]) -> str:
    return f" with labels {format_labels(selector)}" if selector else ""


def _candidates(nodes: Sequence[Node]) -> list[Candidate]:
    """Free capacity of each node: capacity minus the sum of its active allocations."""
    used = {
        row["node_id"]: row
        for row in ResourceAllocation.objects.filter(node__in=nodes, released_at__isnull=True)
        .values("node_id")
        .annotate(cpu=Sum("cpu"), memory_mb=Sum("memory_mb"))
        .order_by()
    }
    result = []
    for node in nodes:
        row = used.get(node.pk, {})
        result.append(
            Candidate(
                node=node,
                free_cpu=node.cpu_capacity - (row.get("cpu") or Decimal(0)),
                free_memory_mb=node.memory_mb_capacity - (row.get("memory_mb") or 0),
            )
        )
    return result


def _no_fit_reason(candidates: Sequence[Candidate], job: Job) -> str:
    selector = job.node_selector or {}
    if not candidates:
        return _truncate(f"no online node{_with_labels(selector)}")
    best = max(candidates, key=lambda c: (c.free_cpu, c.free_memory_mb))
    return _truncate(
        f"waiting for capacity: no online node{_with_labels(selector)} has {job.cpu} cpu and "
        f"{job.memory_mb} MB free (most free: {best.node.name} with {best.free_cpu} cpu, "
        f"{best.free_memory_mb} MB)"
    )


def allocation_reserve(*, execution: Execution, fresh: bool = False) -> Placement:
    """Reserve the job's cpu and memory on a fitting online node; call inside transaction.atomic().

    `fresh`: the execution was inserted by this transaction, so it has no allocation row yet.
    """
    existing = None if fresh else ResourceAllocation.objects.filter(execution=execution).first()
    if existing is not None and existing.released_at is None:
        return Placement(allocation=existing, reason="")  # already placed: idempotent
    job = execution.job
    selector = job.node_selector or {}
    nodes = list(
        Node.objects.select_for_update()
        .filter(status=Node.Status.ONLINE, labels__contains=selector)
        .order_by("pk")
    )
    candidates = _candidates(nodes)
    fitting = [c for c in candidates if c.free_cpu >= job.cpu and c.free_memory_mb >= job.memory_mb]
    if not fitting:
        return Placement(allocation=None, reason=_no_fit_reason(candidates, job))
    chosen = placement_policy().choose(fitting, job)
    if existing is not None:
        # One allocation row per execution (one-to-one): a re-placed execution reuses its released row.
        existing.node = chosen.node
        existing.cpu, existing.memory_mb = job.cpu, job.memory_mb
        existing.allocated_at, existing.released_at = timezone.now(), None
        existing.save(update_fields=["node", "cpu", "memory_mb", "allocated_at", "released_at"])
        return Placement(allocation=existing, reason="")
    allocation = ResourceAllocation.objects.create(
        node=chosen.node, execution=execution, cpu=job.cpu, memory_mb=job.memory_mb
    )
    return Placement(allocation=allocation, reason="")


def placement_impossible_reason(*, cpu: Decimal, memory_mb: int, node_selector: dict) -> str | None:
    """Why no registered node (any status) could ever hold this request; None if one could or none exist."""
    nodes = Node.objects.all()
    if not nodes.exists():
        return None  # the first worker has not started yet: the job waits as pending
    matching = nodes.filter(labels__contains=node_selector or {})
    if not matching.exists():
        return _truncate(f"no registered node has the labels {format_labels(node_selector)}")
    if matching.filter(cpu_capacity__gte=cpu, memory_mb_capacity__gte=memory_mb).exists():
        return None
    largest = matching.aggregate(cpu=Max("cpu_capacity"), memory_mb=Max("memory_mb_capacity"))
    return _truncate(
        f"no registered node{_with_labels(node_selector)} is large enough for {cpu} cpu and "
        f"{memory_mb} MB (largest: {largest['cpu']} cpu, {largest['memory_mb']} MB)"
    )
