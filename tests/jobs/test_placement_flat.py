"""Batched placement and reaping cost the same whatever the number of nodes (issue 13, item 6).

Statements are counted (CaptureQueriesContext sees the prepared SQL of scheduler_project/db.py too), and
the in-memory planner's per-node checks are counted through a wrapper: no wall clock.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import cast

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs import messages
from jobs.models import DeadLetter, Execution, Job
from jobs.services import executions, firing
from jobs.services.executions import NewExecution
from jobs.services.retries import FailedAttempt, failure_records_create
from nodes import placement
from nodes.models import Node, ResourceAllocation
from nodes.placement import Demand, NoFit, Reservation, capacity_reserve
from tests.factories import JobFactory, NodeFactory, UserFactory

pytestmark = pytest.mark.django_db
SLOT = datetime(2030, 1, 1, tzinfo=UTC)


def _pending(count: int, **job_fields: object) -> list[int]:
    owner = UserFactory()
    jobs = [cast(Job, JobFactory(owner=owner, **job_fields)) for _ in range(count)]
    rows = executions.executions_create(
        items=[NewExecution(job_id=job.pk, scheduled_for=SLOT, trigger="manual") for job in jobs], now=SLOT
    )
    return [row.id for row in rows]


def _published(monkeypatch) -> list[messages.ExecuteMessage]:
    sent: list[messages.ExecuteMessage] = []
    monkeypatch.setattr(messages, "execute_publish_on_commit", sent.extend)
    return sent


def _place_across(nodes: int, monkeypatch) -> tuple[int, list[messages.ExecuteMessage], list[int]]:
    """40 pending executions of 0.5 cpu on `nodes` nodes of 20 / nodes cpu: the batch fills every node."""
    Node.objects.update(status=Node.Status.OFFLINE)  # the previous cluster leaves
    cpu = Decimal(20) / nodes
    for _ in range(nodes):
        NodeFactory(cpu_capacity=cpu)
    ids = _pending(40, cpu=Decimal("0.5"))
    sent = _published(monkeypatch)
    with CaptureQueriesContext(connection) as queries:
        assert firing.pending_place() == 40
    return len(queries), sent, ids


def test_a_placed_batch_costs_the_same_statements_on_10_and_on_40_nodes(monkeypatch):
    on_10, _, _ = _place_across(10, monkeypatch)
    on_40, sent, ids = _place_across(40, monkeypatch)

    assert on_10 == on_40
    queued = dict(Execution.objects.filter(pk__in=ids).values_list("pk", "node__name"))
    assert set(Execution.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"queued"}
    assert len(set(queued.values())) == 40  # one per node: the batch did span all 40
    allocated = dict(
        ResourceAllocation.objects.filter(execution_id__in=ids, released_at__isnull=True).values_list(
            "execution_id", "node__name"
        )
    )
    assert allocated == queued  # each queued on the node its capacity was reserved on
    assert sorted((m.execution_id, m.queue) for m in sent) == sorted(
        (pk, f"node.{name}") for pk, name in queued.items()
    )


def test_the_queue_transition_moves_only_pending_rows_and_returns_them():
    first, second, third = NodeFactory(), NodeFactory(), NodeFactory()
    ids = _pending(3)
    executions.execution_cancel(execution_id=ids[2])
    with transaction.atomic():
        changed = executions.executions_queue(
            placements=[(ids[0], first.pk), (ids[1], second.pk), (ids[2], third.pk)]
        )
    assert [(c.id, c.source, c.target, c.node_name) for c in changed] == [
        (ids[0], "pending", "queued", first.name),
        (ids[1], "pending", "queued", second.name),
    ]
    rows = Execution.objects.in_bulk(ids)
    assert (rows[ids[0]].node_id, rows[ids[1]].node_id) == (first.pk, second.pk)
    assert rows[ids[0]].queued_at is not None
    assert rows[ids[0]].pending_reason == ""
    assert rows[ids[2]].status == "cancelled"
    assert rows[ids[2]].node_id is None
    assert executions.executions_queue(placements=[(ids[0], third.pk)]) == []  # queued already: no row
    assert Execution.objects.get(pk=ids[0]).node_id == first.pk


def _count_room_checks(monkeypatch) -> list[int]:
    """Count label checks: every per-node look of the planner and of the no-fit reasons makes one."""
    calls = [0]
    matches = placement.Room.matches

    def counted(self, selector):
        calls[0] += 1
        return matches(self, selector)

    monkeypatch.setattr(placement.Room, "matches", counted)
    return calls


def _full_cluster_pass(demand_count: int, calls: list[int]) -> tuple[int, set[str]]:
    calls[0] = 0
    demands = [
        Demand(holder_id=10_000 + i, cpu=Decimal("0.5"), memory_mb=64, selector={})
        for i in range(demand_count)
    ]
    with transaction.atomic():
        results = capacity_reserve(demands=demands)
    assert all(isinstance(r, NoFit) for r in results)
    return calls[0], {r.reason for r in results if isinstance(r, NoFit)}


def test_a_pass_on_a_full_cluster_checks_the_nodes_once_not_once_per_demand(monkeypatch):
    for _ in range(40):
        NodeFactory(cpu_capacity=Decimal(2), cpu_allocated=Decimal("1.75"))
    calls = _count_room_checks(monkeypatch)
    few, reasons_few = _full_cluster_pass(20, calls)
    many, reasons_many = _full_cluster_pass(400, calls)

    assert few == many
    assert many <= 5 * 40  # the plan's pool, 4 sampled, one scan; the reasons' pool and one filter
    assert len(reasons_many) == 1
    assert reasons_many == reasons_few
    (reason,) = reasons_many
    assert reason.startswith("waiting for capacity: no online node has 0.5 cpu and 64 MB free (most free: ")


def test_a_demand_too_large_for_the_room_left_does_not_stop_smaller_ones():
    node = NodeFactory(cpu_capacity=Decimal(2), cpu_allocated=Decimal("1.5"), memory_mb_capacity=1024)
    holders = _pending(6)  # placed ones get allocation rows
    demands = [
        Demand(holder_id=holders[0], cpu=Decimal(1), memory_mb=64, selector={}),  # too much cpu
        Demand(holder_id=holders[1], cpu=Decimal("0.25"), memory_mb=2048, selector={}),  # too much memory
        Demand(holder_id=holders[2], cpu=Decimal("0.25"), memory_mb=64, selector={}),  # fits
        Demand(holder_id=holders[3], cpu=Decimal(1), memory_mb=128, selector={}),  # larger than the first
        Demand(holder_id=holders[4], cpu=Decimal("0.25"), memory_mb=64, selector={}),  # fits
        Demand(holder_id=holders[5], cpu=Decimal("0.25"), memory_mb=64, selector={}),  # no room left
    ]
    with transaction.atomic():
        results = capacity_reserve(demands=demands)
    assert [type(r) for r in results] == [NoFit, NoFit, Reservation, NoFit, Reservation, NoFit]
    assert all(r.node_id == node.pk for r in results if isinstance(r, Reservation))
    reasons = [r.reason for r in results if isinstance(r, NoFit)]
    assert reasons[1].startswith("waiting for a larger node: no online node has 0.25 cpu and 2048 MB")
    assert reasons[2].startswith("waiting for capacity: no online node has 1 cpu and 128 MB free")
    assert reasons[3] == (
        f"waiting for capacity: no online node has 0.25 cpu and 64 MB free (most free: {node.name} with "
        "0.000 cpu, 896 MB)"
    )


def _running_on_dead_node(count: int) -> Node:
    node = cast(Node, NodeFactory(cpu_capacity=Decimal(100)))
    ids = _pending(count, max_retries=0)
    with transaction.atomic():
        executions.executions_queue(placements=[(pk, node.pk) for pk in ids])
    for pk in ids:
        assert executions.execution_claim(execution_id=pk, node_name=node.name, pid=os.getpid())
    Node.objects.filter(pk=node.pk).update(status=Node.Status.OFFLINE)
    return node


def _recover(node: Node) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        assert executions.executions_recover_node(node_id=node.pk, reason="node went offline") > 0
    return len(queries), [q["sql"][:60] for q in queries.captured_queries]


def test_recovering_a_node_dead_letters_20_runs_in_the_statements_of_2(monkeypatch):
    notices: list[dict] = []
    monkeypatch.setattr(messages, "dead_letter_notice_on_commit", notices.append)
    two, _ = _recover(_running_on_dead_node(2))
    twenty_node = _running_on_dead_node(20)
    twenty, sql = _recover(twenty_node)

    assert two == twenty, sql
    lost = list(Execution.objects.filter(node=twenty_node).values_list("pk", flat=True))
    letters = {d.execution_id: d for d in DeadLetter.objects.filter(execution_id__in=lost)}
    assert sorted(letters) == sorted(lost)
    assert {(d.status, d.replay_count, d.error) for d in letters.values()} == {
        ("open", 0, "node went offline")
    }
    assert len(notices) == 22
    assert {n["execution_id"]: n["dead_letter_id"] for n in notices[2:]} == {
        pk: d.pk for pk, d in letters.items()
    }


def test_a_repeated_dead_letter_decision_keeps_the_letter_and_sends_no_second_notice(monkeypatch):
    notices: list[dict] = []
    monkeypatch.setattr(messages, "dead_letter_notice_on_commit", notices.append)
    node = _running_on_dead_node(1)
    executions.executions_recover_node(node_id=node.pk, reason="node went offline")
    (execution,) = Execution.objects.filter(node=node)
    letter = DeadLetter.objects.get(execution=execution)
    attempt = FailedAttempt(
        execution_id=execution.pk, job_id=execution.job_id, attempt=1, status="lost", error="again",
        max_retries=0, retry_backoff_seconds=1, retry_backoff_max_seconds=1, retry_jitter=False,
    )  # fmt: skip
    failure_records_create(attempts=[attempt, attempt])
    assert len(notices) == 1
    assert list(DeadLetter.objects.filter(execution=execution)) == [letter]
    assert DeadLetter.objects.get(pk=letter.pk).error == "node went offline"
