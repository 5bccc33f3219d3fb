"""executions/ and dead-letters/ endpoints: list, filters, detail, cancel, replay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import DeadLetter, Execution
from nodes.models import ResourceAllocation
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db


def test_execution_list_detail_and_filters(as_alice, alice, node):
    job, other = JobFactory(owner=alice), JobFactory(owner=alice)
    old = Execution.objects.create(
        job=job, scheduled_for=timezone.now() - timedelta(days=2), status=Execution.Status.SUCCEEDED,
        output="hello output", exit_code=0,
    )  # fmt: skip
    Execution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    queued = Execution.objects.create(
        job=job, scheduled_for=timezone.now(), status=Execution.Status.QUEUED, node=node
    )
    failed = Execution.objects.create(job=other, scheduled_for=timezone.now(), status=Execution.Status.FAILED)

    def ids(query: str = "") -> list[int]:
        response = as_alice.get(f"/api/v1/executions/{query}")
        assert response.status_code == 200, response.content
        return [e["id"] for e in response.json()["results"]]

    assert set(ids()) == {old.pk, queued.pk, failed.pk}
    assert set(ids(f"?job={job.pk}")) == {old.pk, queued.pk}
    assert ids("?status=failed") == [failed.pk]
    assert set(ids("?status=failed&status=queued")) == {failed.pk, queued.pk}
    assert ids(f"?node={node.pk}") == [queued.pk]
    assert ids(f"?node_name={node.name}") == [queued.pk]
    yesterday = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert set(ids(f"?since={yesterday}")) == {queued.pk, failed.pk}
    assert ids(f"?until={yesterday}") == [old.pk]
    assert ids("?ordering=created_at")[0] == old.pk
    for bad in ("?job=abc", "?since=yesterday", "?status=done", f"?job={10**30}", "?node=-1"):
        assert as_alice.get(f"/api/v1/executions/{bad}").status_code == 400, bad
    listed = as_alice.get(f"/api/v1/executions/?job={job.pk}").json()["results"]
    assert "output" not in listed[0]  # the list leaves the output tail out
    detail = as_alice.get(f"/api/v1/executions/{old.pk}/").json()
    assert detail["output"] == "hello output"
    assert detail["exit_code"] == 0
    assert as_alice.get(f"/api/v1/executions/{queued.pk}/").json()["node"] == node.name


def test_cancel_execution(as_alice, alice, node):
    job = JobFactory(owner=alice)
    queued = Execution.objects.create(job=job, scheduled_for=timezone.now(), status="queued", node=node)
    ResourceAllocation.objects.create(node=node, execution=queued, cpu=job.cpu, memory_mb=job.memory_mb)
    response = as_alice.post(f"/api/v1/executions/{queued.pk}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert "alice" in response.json()["error"]
    assert ResourceAllocation.objects.get(execution=queued).released_at is not None
    assert as_alice.post(f"/api/v1/executions/{queued.pk}/cancel/").status_code == 200  # idempotent
    done = Execution.objects.create(job=job, scheduled_for=timezone.now(), status="succeeded")
    conflict = as_alice.post(f"/api/v1/executions/{done.pk}/cancel/")
    assert conflict.status_code == 409
    assert "succeeded" in conflict.json()["detail"]


def test_execution_fields_are_read_only(as_alice, alice, node):
    execution = Execution.objects.create(job=JobFactory(owner=alice), scheduled_for=timezone.now())
    url = f"/api/v1/executions/{execution.pk}/"
    for method in ("put", "patch", "delete"):
        response = getattr(as_alice, method)(url, {"status": "succeeded", "attempt": 5, "node": node.pk},
                                              format="json")  # fmt: skip
        assert response.status_code == 405
    execution.refresh_from_db()
    assert (execution.status, execution.attempt, execution.node) == ("pending", 1, None)


def test_dead_letters_list_detail_replay(as_alice, alice):
    job = JobFactory(owner=alice)
    dead = Execution.objects.create(job=job, scheduled_for=timezone.now(), status="dead", attempt=3)
    letter = DeadLetter.objects.create(job=job, execution=dead, error="boom")
    listing = as_alice.get("/api/v1/dead-letters/").json()
    assert [d["id"] for d in listing["results"]] == [letter.pk]
    detail = as_alice.get(f"/api/v1/dead-letters/{letter.pk}/").json()
    assert (detail["error"], detail["attempts"], detail["status"]) == ("boom", 3, "open")
    response = as_alice.post(f"/api/v1/dead-letters/{letter.pk}/replay/")
    assert response.status_code == 201, response.content
    replay = response.json()
    assert replay["trigger"] == "replay"
    assert replay["replay_of"] == dead.pk
    assert replay["status"] == "pending"  # no node registered: waits for capacity
    letter.refresh_from_db()
    assert (letter.status, letter.replay_count) == ("replayed", 1)
    assert as_alice.get("/api/v1/dead-letters/?status=open").json()["count"] == 0
    assert as_alice.get(f"/api/v1/dead-letters/?job={job.pk}&status=replayed").json()["count"] == 1
    job.status = "archived"
    job.save()
    refused = as_alice.post(f"/api/v1/dead-letters/{letter.pk}/replay/")
    assert refused.status_code == 400
    assert "archived" in refused.json()["dead_letter"][0]


def test_replay_places_on_a_node(as_alice, alice):
    node = NodeFactory()
    job = JobFactory(owner=alice)
    dead = Execution.objects.create(job=job, scheduled_for=timezone.now(), status="dead")
    letter = DeadLetter.objects.create(job=job, execution=dead)
    replay = as_alice.post(f"/api/v1/dead-letters/{letter.pk}/replay/").json()
    assert (replay["status"], replay["node"]) == ("queued", node.name)
