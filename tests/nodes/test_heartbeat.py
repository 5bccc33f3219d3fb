"""A real worker registers its node, consumes node.<name>, heartbeats, and goes offline on warm shutdown."""

from __future__ import annotations

import signal
from decimal import Decimal

import pytest

from nodes.models import Node
from scheduler_project.celery import app
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

NODE_ENV = {
    "SCHEDULER_NODE_CPU": "1.5",
    "SCHEDULER_NODE_MEMORY_MB": "512",
    "SCHEDULER_NODE_LABELS": "region=eu,gpu=no",
    "SCHEDULER_HEARTBEAT_SECONDS": "0.5",
}


def node(name: str) -> Node | None:
    return Node.objects.filter(name=name).first()


def test_worker_registers_heartbeats_consumes_its_queue_and_goes_offline(start_worker):
    worker = start_worker("hb1@hostA", concurrency=1, **NODE_ENV)

    registered = wait_for(lambda: node("hb1@hostA"), timeout=60, what="node registration")
    assert registered.hostname == "hostA"
    assert (registered.cpu_capacity, registered.memory_mb_capacity) == (Decimal("1.5"), 512)
    assert registered.labels == {"region": "eu", "gpu": "no"}
    assert registered.status == Node.Status.ONLINE
    assert "celery" in registered.version
    first_beat = registered.last_heartbeat_at
    wait_for(
        lambda: node("hb1@hostA").last_heartbeat_at > first_beat and node("hb1@hostA").memory_used_mb > 0,
        timeout=30,
        what="heartbeats with usage",
    )

    queues = wait_for(
        lambda: app.control.inspect(destination=["hb1@hostA"], timeout=2).active_queues(),
        timeout=30,
        what="worker answering inspect",
    )
    names = {q["name"] for q in queues["hb1@hostA"]}
    assert {"default", "node.hb1@hostA"} <= names

    worker.signal(signal.SIGTERM)
    wait_for(lambda: not worker.alive(), timeout=60, what="warm shutdown")
    assert node("hb1@hostA").status == Node.Status.OFFLINE, worker.log()
