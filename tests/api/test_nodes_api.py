"""nodes/, resources/usage/ and allocations/ endpoints."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Execution
from nodes.models import Node, ResourceAllocation
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db

REGISTER = {
    "name": "w9@host9",
    "hostname": "host9",
    "ip_address": "10.0.0.9",
    "cpu_capacity": 2,
    "memory_mb_capacity": 2048,
    "labels": {"region": "eu"},
    "version": "1.0",
}


def test_operator_registers_and_reregisters_a_node(as_olga):
    response = as_olga.post("/api/v1/nodes/", REGISTER, format="json")
    assert response.status_code == 201, response.content
    node = response.json()
    assert (node["name"], node["status"], node["labels"]) == ("w9@host9", "online", {"region": "eu"})
    assert node["cpu_capacity"] == 2.0
    assert (node["cpu_allocated"], node["memory_mb_allocated"], node["running"]) == (0, 0, 0)
    again = as_olga.post("/api/v1/nodes/", {**REGISTER, "cpu_capacity": 4}, format="json")
    assert again.status_code == 200
    assert again.json()["id"] == node["id"]
    assert Node.objects.get(name="w9@host9").cpu_capacity == Decimal("4")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "no-at-sign"}, "name"),
        ({"cpu_capacity": 0}, "cpu_capacity"),
        ({"cpu_capacity": "many"}, "cpu_capacity"),
        ({"memory_mb_capacity": -1}, "memory_mb_capacity"),
        ({"memory_mb_capacity": "1GB"}, "memory_mb_capacity"),
        ({"cpu_capacity": "2"}, "cpu_capacity"),
        ({"ip_address": "999.1.1.1"}, "ip_address"),
        ({"labels": "gpu"}, "labels"),
    ],
)
def test_register_bad_input_is_400(as_olga, overrides, field):
    response = as_olga.post("/api/v1/nodes/", {**REGISTER, **overrides}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Node.objects.exists()


def test_only_operators_change_nodes(as_alice, as_vic, as_olga, node):
    for client in (as_alice, as_vic):
        assert client.get("/api/v1/nodes/").json()["count"] == 1
        assert client.get(f"/api/v1/nodes/{node.pk}/").status_code == 200
        assert client.post("/api/v1/nodes/", REGISTER, format="json").status_code == 403
        assert (
            client.patch(f"/api/v1/nodes/{node.pk}/", {"status": "draining"}, format="json").status_code
            == 403
        )
    node.refresh_from_db()
    assert node.status == "online"
    assert not Node.objects.filter(name=REGISTER["name"]).exists()


def test_drain_and_undrain(as_olga, node):
    url = f"/api/v1/nodes/{node.pk}/"
    response = as_olga.patch(url, {"status": "draining"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "draining"
    assert as_olga.patch(url, {"status": "draining"}, format="json").status_code == 200  # idempotent
    assert as_olga.patch(url, {"status": "online"}, format="json").json()["status"] == "online"
    assert as_olga.patch(url, {"status": "offline"}, format="json").status_code == 400
    assert as_olga.patch(url, {"name": "renamed@x"}, format="json").status_code == 400
    Node.objects.filter(pk=node.pk).update(status="offline")
    conflict = as_olga.patch(url, {"status": "online"}, format="json")
    assert conflict.status_code == 409
    assert "offline" in conflict.json()["detail"]
    node.refresh_from_db()
    assert node.name == "n1@host1"


def test_node_filters(as_olga, node):
    NodeFactory(status="offline")
    assert as_olga.get("/api/v1/nodes/?status=offline").json()["count"] == 1
    assert as_olga.get("/api/v1/nodes/?ordering=-name").json()["count"] == 2


def _hold(
    node: Node, owner, cpu: str = "0.5", memory_mb: int = 256, running: bool = True
) -> ResourceAllocation:
    job: Any = JobFactory(owner=owner, cpu=Decimal(cpu), memory_mb=memory_mb)
    execution = Execution.objects.create(
        job=job, scheduled_for=timezone.now(), node=node, status="running" if running else "succeeded"
    )
    return ResourceAllocation.objects.create(
        node=node, execution=execution, cpu=job.cpu, memory_mb=job.memory_mb,
        released_at=None if running else timezone.now(),
    )  # fmt: skip


def test_resource_usage(as_vic, alice, node):
    Node.objects.filter(pk=node.pk).update(cpu_percent=50.0, memory_used_mb=300)
    _hold(node, alice)
    _hold(node, alice, running=False)
    NodeFactory(status="offline", cpu_capacity=Decimal("8"))
    response = as_vic.get("/api/v1/resources/usage/")
    assert response.status_code == 200, response.content
    usage = response.json()
    cluster = usage["cluster"]
    assert (cluster["cpu_capacity"], cluster["cpu_allocated"], cluster["cpu_free"]) == (4.0, 0.5, 3.5)
    assert (cluster["memory_mb_capacity"], cluster["memory_mb_allocated"]) == (4096, 256)
    assert cluster["cpu_used"] == 2.0  # 50 % of 4 cores
    assert cluster["memory_mb_used"] == 300
    assert cluster["running"] == 1
    assert cluster["nodes_by_status"] == {"online": 1, "draining": 0, "offline": 1}
    by_name = {n["name"]: n for n in usage["nodes"]}
    assert by_name[node.name]["cpu_allocated"] == 0.5
    assert by_name[node.name]["memory_mb_free"] == 4096 - 256


def test_allocations_are_scoped_and_filtered(as_alice, as_bob, as_olga, alice, bob, node):
    mine = _hold(node, alice)
    released = _hold(node, alice, running=False)
    theirs = _hold(NodeFactory(), bob)

    def ids(client, query: str = "") -> set[int]:
        response = client.get(f"/api/v1/allocations/{query}")
        assert response.status_code == 200, response.content
        return {a["id"] for a in response.json()["results"]}

    assert ids(as_alice) == {mine.pk, released.pk}
    assert ids(as_bob) == {theirs.pk}
    assert ids(as_olga) == {mine.pk, released.pk, theirs.pk}
    assert ids(as_olga, "?active=true") == {mine.pk, theirs.pk}
    assert ids(as_olga, "?active=false") == {released.pk}
    assert ids(as_olga, f"?node={node.pk}") == {mine.pk, released.pk}
    assert ids(as_olga, f"?node_name={node.name}&active=true") == {mine.pk}
    assert ids(as_olga, f"?execution={theirs.execution_id}") == {theirs.pk}
    detail = as_alice.get(f"/api/v1/allocations/{mine.pk}/").json()
    assert (detail["node_name"], detail["cpu"], detail["active"]) == (node.name, 0.5, True)
    assert detail["job"] == mine.execution.job_id
    assert as_alice.get(f"/api/v1/allocations/{theirs.pk}/").status_code == 404
