"""Placement: labels, capacity, the least-loaded policy, reasons, counters, no over-commit when concurrent."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from jobs.models import Execution
from nodes import placement
from nodes.models import Node, ResourceAllocation
from nodes.placement import (
    Demand,
    LeastLoadedPolicy,
    PlacementPolicy,
    Reservation,
    Room,
    capacity_counters_repair,
    capacity_release,
    capacity_reserve,
    placement_impossible_reason,
)
from tests.factories import NodeFactory
from tests.nodes.conftest import make_job


def make_execution(**job_fields) -> Execution:
    job = make_job(**job_fields)
    return Execution.objects.create(job=job, scheduled_for=timezone.now())


def demand(execution: Execution) -> Demand:
    job = execution.job
    return Demand(
        holder_id=execution.pk, cpu=job.cpu, memory_mb=job.memory_mb, selector=job.node_selector or {}
    )


@dataclass
class Placed:
    """What the old tests read: the allocation row (or None) and the reason."""

    allocation: ResourceAllocation | None
    reason: str


def reserve(*executions: Execution) -> Any:
    with transaction.atomic():
        results = capacity_reserve(demands=[demand(e) for e in executions])
    placed = [
        Placed(ResourceAllocation.objects.get(execution=e), "")
        if isinstance(r, Reservation)
        else Placed(None, r.reason)
        for e, r in zip(executions, results, strict=True)
    ]
    return placed[0] if len(placed) == 1 else placed


def counters(node: Node) -> tuple[Decimal, int]:
    node.refresh_from_db()
    return node.cpu_allocated, node.memory_mb_allocated


def active_sums(node: Node) -> tuple[Decimal, int]:
    agg = ResourceAllocation.objects.filter(node=node, released_at__isnull=True).aggregate(
        c=Sum("cpu"), m=Sum("memory_mb")
    )
    return agg["c"] or Decimal(0), agg["m"] or 0


@pytest.mark.django_db
def test_places_on_matching_node_and_records_the_allocation():
    NodeFactory(name="a@h1", labels={"region": "us"})
    eu = NodeFactory(name="b@h2", labels={"region": "eu", "gpu": "no"})
    execution = make_execution(cpu=Decimal("1.5"), memory_mb=256, node_selector={"region": "eu"})

    placement = reserve(execution)

    assert placement.reason == ""
    assert placement.allocation is not None
    assert placement.allocation.node == eu
    assert (placement.allocation.cpu, placement.allocation.memory_mb) == (Decimal("1.5"), 256)
    execution.refresh_from_db()
    assert execution.status == Execution.Status.PENDING  # the execution row is the caller's to change


@pytest.mark.django_db
def test_least_loaded_policy_prefers_the_largest_free_cpu_share():
    small = NodeFactory(name="small@h", cpu_capacity=Decimal("2"))
    big = NodeFactory(name="big@h", cpu_capacity=Decimal("8"))
    ResourceAllocation.objects.create(node=big, execution=make_execution(), cpu=Decimal("6"), memory_mb=1)
    Node.objects.filter(pk=big.pk).update(cpu_allocated=Decimal("6"), memory_mb_allocated=1)

    # big has 2 of 8 cpu free (25%), small 2 of 2 (100%).
    assert reserve(make_execution(cpu=Decimal("1"))).allocation.node == small
    assert LeastLoadedPolicy.__doc__


class PackPolicy(PlacementPolicy):
    """Bin packing: the node with the least free cpu that still fits."""

    order_sql = 'cpu_capacity - cpu_allocated, name COLLATE "C"'

    def sort_key(self, room: Room) -> tuple[Any, ...]:
        return (room.free_cpu, room.name)


@pytest.mark.django_db
def test_another_policy_is_one_setting_away(settings):
    settings.SCHEDULER_PLACEMENT_POLICY = "tests.nodes.test_placement.PackPolicy"
    NodeFactory(name="small@h", cpu_capacity=Decimal("2"))
    NodeFactory(name="big@h", cpu_capacity=Decimal("8"))
    assert reserve(make_execution(cpu=Decimal("1"))).allocation.node.name == "small@h"
    # A batch is planned in memory with the same policy.
    batch = reserve(make_execution(cpu=Decimal("1")), make_execution(cpu=Decimal("1")))
    assert [p.allocation.node.name for p in batch] == ["small@h", "big@h"]


@pytest.mark.django_db
def test_skips_draining_and_offline_nodes_and_full_nodes():
    NodeFactory(name="d@h", status=Node.Status.DRAINING)
    NodeFactory(name="o@h", status=Node.Status.OFFLINE)
    full = NodeFactory(name="f@h", cpu_capacity=Decimal("1"), memory_mb_capacity=1000)
    first = reserve(make_execution(cpu=Decimal("1"), memory_mb=100))
    assert first.allocation.node == full

    second = reserve(make_execution(cpu=Decimal("0.5"), memory_mb=100))

    assert second.allocation is None
    assert "waiting for capacity" in second.reason
    assert "f@h with 0.000 cpu" in second.reason


@pytest.mark.django_db
def test_reason_when_no_online_node_has_the_labels():
    NodeFactory(labels={"gpu": "no"})
    placement = reserve(make_execution(node_selector={"gpu": "yes"}))
    assert placement.allocation is None
    assert placement.reason == "no online node with labels gpu=yes"


@pytest.mark.django_db
def test_reserve_is_idempotent_and_release_frees_capacity():
    NodeFactory(name="n@h", cpu_capacity=Decimal("1"))
    execution = make_execution(cpu=Decimal("1"))
    node = Node.objects.get(name="n@h")
    first = reserve(execution)
    assert first.allocation.node == node
    assert counters(node) == (Decimal("1.000"), 64)
    other = make_execution(cpu=Decimal("1"))
    assert reserve(other).allocation is None

    assert capacity_release(holder_ids=[execution.pk]) == 1
    assert capacity_release(holder_ids=[execution.pk]) == 0  # idempotent
    assert counters(node) == (Decimal("0.000"), 0)

    assert reserve(other).allocation.node.name == "n@h"
    # Placed again after a release, an execution reuses its one allocation row.
    capacity_release(holder_ids=[other.pk])
    again = reserve(other)
    assert ResourceAllocation.objects.filter(execution=other).count() == 1
    assert again.allocation.active
    assert counters(node) == active_sums(node)


@pytest.mark.django_db
def test_placement_impossible_reason():
    assert placement_impossible_reason(cpu=Decimal("99"), memory_mb=1, node_selector={}) is None  # no nodes
    NodeFactory(cpu_capacity=Decimal("4"), memory_mb_capacity=4096, labels={"region": "eu"})
    NodeFactory(cpu_capacity=Decimal("2"), memory_mb_capacity=8192, status=Node.Status.OFFLINE)

    assert placement_impossible_reason(cpu=Decimal("4"), memory_mb=4096, node_selector={}) is None
    assert placement_impossible_reason(cpu=Decimal("2"), memory_mb=8000, node_selector={}) is None
    too_big = placement_impossible_reason(cpu=Decimal("5"), memory_mb=10, node_selector={"region": "eu"})
    assert too_big == (
        "no registered node with labels region=eu is large enough for 5 cpu and 10 MB "
        "(largest: 4.000 cpu, 4096 MB)"
    )
    assert placement_impossible_reason(cpu=Decimal("1"), memory_mb=1, node_selector={"region": "us"}) == (
        "no registered node has the labels region=us"
    )


@pytest.mark.django_db(transaction=True)
def test_placement_outside_a_transaction_is_refused():
    with pytest.raises(RuntimeError, match="inside transaction.atomic"):
        capacity_reserve(demands=[Demand(holder_id=1, cpu=Decimal("1"), memory_mb=1, selector={})])


@pytest.mark.django_db
def test_batch_fills_nodes_like_single_placements_and_says_why_the_rest_waits():
    NodeFactory(name="a@h", cpu_capacity=Decimal("2"), memory_mb_capacity=1000, labels={"zone": "a"})
    NodeFactory(name="b@h", cpu_capacity=Decimal("2"), memory_mb_capacity=1000, labels={"zone": "b"})
    executions = [make_execution(cpu=Decimal("1"), memory_mb=10) for _ in range(5)]
    gpu = make_execution(node_selector={"gpu": "yes"})

    placed = reserve(*executions, gpu)

    names = [p.allocation.node.name if p.allocation else None for p in placed]
    assert sorted(n for n in names[:4] if n) == ["a@h", "a@h", "b@h", "b@h"]  # spread, then full
    assert names[4] is None
    assert placed[4].reason.startswith("waiting for capacity: no online node has 1 cpu and 10 MB")
    assert placed[5].reason == "no online node with labels gpu=yes"
    for node in Node.objects.all():
        assert counters(node) == active_sums(node) == (Decimal("2.000"), 20)


@pytest.mark.django_db
def test_sql_and_python_orders_of_the_default_policy_agree():
    """The policy orders nodes twice (SQL for one demand, Python for a batch): both must agree."""
    rng = random.Random(7)
    policy = LeastLoadedPolicy()
    for _ in range(200):
        rooms = []
        for i in range(6):
            cap = Decimal(rng.choice(["1", "2", "4", "0.5"]))
            rooms.append(
                Room(
                    id=i,
                    name=rng.choice(["a", "B", "c", "_d"]) + str(i),
                    labels={},
                    cpu_capacity=cap,
                    cpu_allocated=cap * Decimal(rng.choice(["0", "0.25", "0.5", "1"])),
                    memory_mb_capacity=rng.choice([512, 1024]),
                    memory_mb_allocated=rng.choice([0, 256, 512]),
                )
            )
        python_order = [r.id for r in sorted(rooms, key=policy.sort_key)]
        assert python_order == _sql_order(rooms, policy)


def _sql_order(rooms: list[Room], policy: PlacementPolicy) -> list[int]:
    values = ", ".join(["(%s, %s, %s::numeric, %s::numeric, %s, %s)"] * len(rooms))
    params = [
        v for r in rooms for v in (r.id, r.name, r.cpu_capacity, r.cpu_allocated, r.memory_mb_capacity,
                                   r.memory_mb_allocated)
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM (VALUES {values}) AS t(id, name, cpu_capacity, cpu_allocated, "  # noqa: S608
            f"memory_mb_capacity, memory_mb_allocated) ORDER BY {policy.order_sql}",
            params,
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_drifted_counters_are_repaired_from_the_allocation_rows():
    node = NodeFactory(name="drift@h", cpu_capacity=Decimal("4"), memory_mb_capacity=4096)
    healthy = NodeFactory(name="fine@h")
    reserve(make_execution(cpu=Decimal("1.5"), memory_mb=100), make_execution(cpu=Decimal("1"), memory_mb=50))
    assert all(counters(n) == active_sums(n) for n in Node.objects.all())

    # Corrupt one node: it looks fuller than it is (capacity lost) ...
    Node.objects.filter(pk=node.pk).update(cpu_allocated=Decimal("3.9"), memory_mb_allocated=4000)
    assert reserve(make_execution(cpu=Decimal("3"), memory_mb=10)).allocation.node == healthy
    expected = {n.name: active_sums(n) for n in Node.objects.all()}
    assert capacity_counters_repair() == ["drift@h"]
    assert {n.name: counters(n) for n in Node.objects.all()} == expected
    # ... or emptier (it would over-commit): repaired too, and nothing left to repair after.
    Node.objects.filter(pk=node.pk).update(cpu_allocated=Decimal("0"), memory_mb_allocated=0)
    assert capacity_counters_repair() == ["drift@h"]
    assert counters(node) == active_sums(node)
    assert capacity_counters_repair() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_over_commit():
    """Threads with their own connections reserve at once; the node row lock keeps each node in budget."""
    nodes = [
        NodeFactory(name=f"c{i}@h", cpu_capacity=Decimal("1"), memory_mb_capacity=10_000) for i in range(3)
    ]
    executions = [make_execution(cpu=Decimal("0.3"), memory_mb=10) for _ in range(40)]
    barrier = threading.Barrier(8)
    placed: list[int] = []
    errors: list[BaseException] = []

    def worker(chunk: list[Execution]) -> None:
        try:
            barrier.wait()
            for execution in chunk:
                if reserve(execution).allocation is not None:
                    placed.append(execution.pk)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=worker, args=(executions[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(placed) == 9  # 3 per node of capacity 1 with 0.3 each
    for node in nodes:
        used = ResourceAllocation.objects.filter(node=node, released_at__isnull=True).aggregate(s=Sum("cpu"))
        assert used["s"] <= node.cpu_capacity
        assert counters(node) == active_sums(node)


@pytest.mark.django_db
def test_in_a_large_cluster_a_few_random_nodes_are_looked_at_and_all_only_when_none_fits(settings):
    """The power of k choices: k random candidates among those that match; all of them as a fallback."""
    settings.SCHEDULER_PLACEMENT_CANDIDATES = 3
    nodes = [
        NodeFactory(name=f"big{i:02}@h", cpu_capacity=Decimal("1"), memory_mb_capacity=1000)
        for i in range(20)
    ]
    placement._online["until"] = 0.0  # this process's list of online nodes is read afresh
    placed = [reserve(make_execution(cpu=Decimal("0.5"), memory_mb=1)) for _ in range(20)]
    assert all(p.allocation is not None for p in placed)
    used = {p.allocation.node.name for p in placed}
    assert len(used) >= 10  # spread, not piled on a few nodes (least loaded among the sampled)
    # Fill all but one node: the sample rarely holds it, the fallback over all nodes finds it.
    free = nodes[7]
    for node in nodes:
        if node != free:
            Node.objects.filter(pk=node.pk).update(cpu_allocated=node.cpu_capacity)
    Node.objects.filter(pk=free.pk).update(cpu_allocated=0, memory_mb_allocated=0)
    ResourceAllocation.objects.update(released_at=timezone.now())
    for _ in range(2):
        assert reserve(make_execution(cpu=Decimal("0.5"), memory_mb=1)).allocation.node == free
    assert reserve(make_execution(cpu=Decimal("0.5"), memory_mb=1)).allocation is None  # now all full
    # A batch samples the same way and falls back the same way.
    Node.objects.filter(pk=free.pk).update(cpu_allocated=0)
    batch = reserve(*[make_execution(cpu=Decimal("0.5"), memory_mb=1) for _ in range(3)])
    assert [p.allocation.node if p.allocation else None for p in batch] == [free, free, None]
