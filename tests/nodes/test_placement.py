"""Placement: labels, capacity, the least-loaded policy, reasons, no over-commit under concurrency."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from jobs.models import Execution, Job
from nodes.models import Node, ResourceAllocation
from nodes.placement import (
    Candidate,
    LeastLoadedPolicy,
    PlacementPolicy,
    allocation_reserve,
    placement_impossible_reason,
)
from nodes.services import allocation_release
from tests.factories import NodeFactory
from tests.nodes.conftest import make_job


def make_execution(**job_fields) -> Execution:
    job = make_job(**job_fields)
    return Execution.objects.create(job=job, scheduled_for=timezone.now())


def reserve(execution: Execution):
    with transaction.atomic():
        return allocation_reserve(execution=execution)


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

    # big has 2 of 8 cpu free (25%), small 2 of 2 (100%).
    assert reserve(make_execution(cpu=Decimal("1"))).allocation.node == small
    assert LeastLoadedPolicy.__doc__


class PackPolicy(PlacementPolicy):
    """Bin packing: the node with the least free cpu that still fits."""

    def choose(self, candidates: Sequence[Candidate], job: Job) -> Candidate:
        return min(candidates, key=lambda c: (c.free_cpu, c.node.name))


@pytest.mark.django_db
def test_another_policy_is_one_setting_away(settings):
    settings.SCHEDULER_PLACEMENT_POLICY = "tests.nodes.test_placement.PackPolicy"
    NodeFactory(name="small@h", cpu_capacity=Decimal("2"))
    NodeFactory(name="big@h", cpu_capacity=Decimal("8"))
    assert reserve(make_execution(cpu=Decimal("1"))).allocation.node.name == "small@h"


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
    first = reserve(execution)
    assert reserve(execution).allocation == first.allocation
    other = make_execution(cpu=Decimal("1"))
    assert reserve(other).allocation is None

    assert allocation_release(execution_id=execution.pk) is True
    assert allocation_release(execution_id=execution.pk) is False  # idempotent

    assert reserve(other).allocation.node.name == "n@h"


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
