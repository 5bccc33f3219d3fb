"""Usage selectors, the node admin and the node_drain / node_undrain / node_list commands."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from jobs.models import Execution
from nodes.models import Node, ResourceAllocation
from nodes.selectors import allocation_history, cluster_usage, node_overcommit_peaks
from tests.factories import NodeFactory, UserFactory
from tests.nodes.conftest import make_job


def allocate(node: Node, cpu: str, memory_mb: int, *, status: str = "running", released: bool = False):
    execution = Execution.objects.create(
        job=make_job(), scheduled_for=timezone.now(), status=status, node=node
    )
    return ResourceAllocation.objects.create(
        node=node,
        execution=execution,
        cpu=Decimal(cpu),
        memory_mb=memory_mb,
        released_at=timezone.now() if released else None,
    )


@pytest.mark.django_db
def test_cluster_usage_per_node_and_totals():
    a = NodeFactory(name="a@h", cpu_capacity=Decimal("4"), memory_mb_capacity=4096, cpu_percent=50,
                    memory_used_mb=700)  # fmt: skip
    b = NodeFactory(name="b@h", cpu_capacity=Decimal("2"), memory_mb_capacity=1024, status="draining")
    gone = NodeFactory(name="c@h", cpu_capacity=Decimal("8"), status="offline")
    allocate(a, "1.5", 512)
    allocate(a, "1", 100, status="succeeded", released=True)
    allocate(b, "0.5", 256, status="queued")

    usage = cluster_usage()

    rows = {row.name: row for row in usage.nodes}
    assert (rows["a@h"].cpu_allocated, rows["a@h"].memory_mb_allocated, rows["a@h"].running) == (
        Decimal("1.5"),
        512,
        1,
    )
    assert rows["a@h"].cpu_used == 2.0  # 50% of 4 cores
    assert (rows["a@h"].cpu_free, rows["a@h"].memory_mb_free) == (Decimal("2.5"), 3584)
    assert (rows["b@h"].running, rows[gone.name].cpu_allocated) == (0, 0)
    assert usage.nodes_by_status == {"online": 1, "draining": 1, "offline": 1}
    assert (usage.cpu_capacity, usage.cpu_allocated) == (Decimal("6"), Decimal("2.0"))
    assert (usage.memory_mb_capacity, usage.memory_mb_allocated, usage.memory_mb_used) == (5120, 768, 700)
    assert allocation_history(node_name="a@h").count() == 2
    assert allocation_history(active=True).count() == 2


@pytest.mark.django_db
def test_overcommit_peaks_come_from_overlapping_allocation_records():
    node = NodeFactory(cpu_capacity=Decimal("1"), memory_mb_capacity=1000)
    t0 = timezone.now()
    first, second = allocate(node, "0.6", 10), allocate(node, "0.6", 10)
    ResourceAllocation.objects.filter(pk=first.pk).update(
        allocated_at=t0, released_at=t0 + timedelta(seconds=5)
    )
    ResourceAllocation.objects.filter(pk=second.pk).update(allocated_at=t0 + timedelta(seconds=5))
    assert node_overcommit_peaks(node_name=node.name) == []  # back to back: never both at once

    ResourceAllocation.objects.filter(pk=second.pk).update(allocated_at=t0 + timedelta(seconds=4))
    assert node_overcommit_peaks(node_name=node.name) == [(t0 + timedelta(seconds=4), Decimal("1.2"), 20)]


@pytest.mark.django_db
def test_drain_undrain_and_list_commands():
    NodeFactory(name="w1@hostA", labels={"region": "eu"})
    out = StringIO()

    call_command("node_drain", "w1@hostA", stdout=out)
    assert Node.objects.get(name="w1@hostA").status == Node.Status.DRAINING
    call_command("node_list", "--status", "draining", stdout=out)
    call_command("node_undrain", "w1@hostA", stdout=out)

    text = out.getvalue()
    assert "w1@hostA is draining" in text
    assert "region=eu" in text
    assert "cluster (1 online" not in text  # the list ran while it was draining
    assert "w1@hostA is online" in text
    assert Node.objects.get(name="w1@hostA").status == Node.Status.ONLINE
    with pytest.raises(CommandError, match="no node named 'nope@h'"):
        call_command("node_drain", "nope@h")
    Node.objects.filter(name="w1@hostA").update(status=Node.Status.OFFLINE)
    with pytest.raises(CommandError, match="only an online node can be drained"):
        call_command("node_drain", "w1@hostA")


@pytest.mark.django_db
def test_node_list_without_nodes_is_a_clear_error():
    with pytest.raises(CommandError, match="no node registered yet"):
        call_command("node_list")


@pytest.mark.django_db
def test_admin_lists_usage_and_drains_by_action(client):
    admin = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(admin)
    node = NodeFactory(name="w9@hostZ")
    allocate(node, "1.25", 300)

    page = client.get(reverse("admin:nodes_node_changelist"))
    assert page.status_code == 200
    assert b"1.250 / 4.000" in page.content
    response = client.post(
        reverse("admin:nodes_node_changelist"), {"action": "drain", "_selected_action": [node.pk]}
    )
    assert response.status_code == 302
    assert Node.objects.get(pk=node.pk).status == Node.Status.DRAINING
    assert client.get(reverse("admin:nodes_resourceallocation_changelist")).status_code == 200
    assert client.get(reverse("admin:nodes_node_add")).status_code == 403
