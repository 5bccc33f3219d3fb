"""The autoscaling signal: how many workers each node label set needs for its pending and running work.

A label set is what a job asks of its node: its node_selector plus the labels its kind needs
(`runtime=docker` for container jobs); an execution counts in exactly one label set. Its demand is the cpu,
memory and number of its executions that are pending, queued or running. A worker of the label set is
taken to be the *typical* (median) online node whose labels contain it (else a registered one, else any
registered node), offering cpu_capacity, memory_mb_capacity and SCHEDULER_AUTOSCALE_WORKER_SLOTS
executions at once (when set). Desired workers = the largest of ceil(demand / per-worker capacity) over
those dimensions, at least 1 while there is any demand, and at least the matching nodes that hold work now
(scaling below them would stop running executions).

Work larger than the typical worker is counted too (`too_large`): more workers of that size will not run
it, and the number says so to the operator, who may start larger ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from statistics import median_low
from typing import Any

from django.conf import settings
from django.db.models import Count

from jobs.executors import required_labels
from jobs.models import Execution
from nodes.models import Node
from nodes.placement import format_labels, labels_match


@dataclass
class LabelSetDemand:
    """What the active executions of one label set ask for."""

    selector: dict[str, Any]
    executions: int = 0
    pending: int = 0
    cpu: Decimal = Decimal(0)
    memory_mb: int = 0
    # (cpu, memory_mb) of each distinct job size and how many executions have it
    sizes: dict[tuple[Decimal, int], int] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredWorkers:
    """The signal for one label set, with the figures it was computed from."""

    labels: str  # "region=eu,runtime=docker" (sorted); "" for jobs without a selector
    desired: int
    busy: int  # matching nodes (not offline) that hold work now
    online: int  # matching online nodes
    executions: int  # pending + queued + running
    pending: int
    cpu: float
    memory_mb: int
    worker_cpu: float | None  # the typical worker's size (None: no node ever registered)
    worker_memory_mb: int | None
    worker_slots: int | None
    too_large: int  # executions no typical worker could hold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def selector_parse(text: str) -> dict[str, str]:
    """'k=v,k2=v2' as a selector; ValueError naming the bad item."""
    selector: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        selector[key.strip()] = value.strip()
    return selector


def _effective_selector(kind: str, own: Any) -> dict[str, Any]:
    base = dict(own) if isinstance(own, Mapping) else {}
    return {**base, **required_labels(kind)}


def label_set_demands() -> dict[str, LabelSetDemand]:
    """Active executions' demand per label set (one grouped query over the active rows)."""
    rows = (
        Execution.objects.filter(status__in=Execution.ACTIVE)
        .order_by()
        .values("status", "job__kind", "job__node_selector", "job__cpu", "job__memory_mb")
        .annotate(n=Count("pk"))
    )
    demands: dict[str, LabelSetDemand] = {}
    for row in rows:
        selector = _effective_selector(row["job__kind"], row["job__node_selector"])
        demand = demands.setdefault(format_labels(selector), LabelSetDemand(selector=selector))
        n, cpu, memory_mb = row["n"], row["job__cpu"], row["job__memory_mb"]
        demand.executions += n
        demand.pending += n if row["status"] == Execution.Status.PENDING else 0
        demand.cpu += cpu * n
        demand.memory_mb += memory_mb * n
        demand.sizes[(cpu, memory_mb)] = demand.sizes.get((cpu, memory_mb), 0) + n
    return demands


def _typical(nodes: list[dict[str, Any]]) -> tuple[Decimal, int] | None:
    if not nodes:
        return None
    return median_low(n["cpu_capacity"] for n in nodes), median_low(n["memory_mb_capacity"] for n in nodes)


def _ceil_div(amount: Decimal | int, per_worker: Decimal | int | None) -> int:
    if not per_worker or per_worker <= 0:
        return 0
    return math.ceil(Decimal(amount) / Decimal(per_worker))


def desired_workers_compute(
    demand: LabelSetDemand, nodes: Iterable[dict[str, Any]], *, slots: int | None = None
) -> DesiredWorkers:
    """The desired worker count of one label set, from its demand and the registered nodes (value dicts)."""
    every = list(nodes)
    matching = [n for n in every if labels_match(n["labels"] or {}, demand.selector)]
    online = [n for n in matching if n["status"] == Node.Status.ONLINE]
    busy = [
        n
        for n in matching
        if n["status"] != Node.Status.OFFLINE
        and (n["cpu_allocated"] > 0 or n["memory_mb_allocated"] > 0 or n["running_count"] > 0)
    ]
    shape = _typical(online) or _typical(matching) or _typical(every)
    cpu, memory_mb = shape if shape else (None, None)
    needed = [
        _ceil_div(demand.cpu, cpu),
        _ceil_div(demand.memory_mb, memory_mb),
        _ceil_div(demand.executions, slots),
        1 if demand.executions else 0,
        len(busy),
    ]
    too_large = 0
    if shape:
        too_large = sum(n for (c, m), n in demand.sizes.items() if c > shape[0] or m > shape[1])
    return DesiredWorkers(
        labels=format_labels(demand.selector),
        desired=max(needed),
        busy=len(busy),
        online=len(online),
        executions=demand.executions,
        pending=demand.pending,
        cpu=float(demand.cpu),
        memory_mb=demand.memory_mb,
        worker_cpu=float(cpu) if cpu is not None else None,
        worker_memory_mb=memory_mb,
        worker_slots=slots,
        too_large=too_large,
    )


_NODE_FIELDS = (
    "labels", "status", "cpu_capacity", "memory_mb_capacity", "cpu_allocated", "memory_mb_allocated",
    "running_count",
)  # fmt: skip


def desired_workers(selector: Mapping[str, Any] | None = None) -> list[DesiredWorkers]:
    """The signal for every label set with demand (and the empty one), or for `selector` only."""
    demands = label_set_demands()
    nodes = list(Node.objects.order_by().values(*_NODE_FIELDS))
    slots = settings.SCHEDULER_AUTOSCALE_WORKER_SLOTS
    if selector is not None:
        key = format_labels(selector)
        wanted = [demands.get(key) or LabelSetDemand(selector=dict(selector))]
    else:
        demands.setdefault("", LabelSetDemand(selector={}))
        wanted = [demands[key] for key in sorted(demands)]
    return [desired_workers_compute(demand, nodes, slots=slots) for demand in wanted]
