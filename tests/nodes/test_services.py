"""Node services: labels, registration, heartbeats, drain, the stale-node reaper."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from nodes.models import Node
from nodes.services import (
    node_drain,
    node_heartbeat_record,
    node_mark_offline,
    node_register,
    node_undrain,
    nodes_reap_stale,
    parse_labels,
)
from tests.factories import NodeFactory


def test_parse_labels():
    assert parse_labels(" region=eu, gpu=no ,") == {"region": "eu", "gpu": "no"}
    assert parse_labels("") == {}
    with pytest.raises(ValueError, match="SCHEDULER_NODE_LABELS: 'gpu' is not key=value"):
        parse_labels("region=eu,gpu")


def register(name: str = "w1@hostA", **overrides):
    fields: dict[str, Any] = {
        "name": name,
        "hostname": "hostA",
        "ip_address": "10.0.0.1",
        "cpu_capacity": Decimal("2"),
        "memory_mb_capacity": 2048,
        "labels": {"region": "eu"},
        "version": "test",
    }
    fields.update(overrides)
    return node_register(**fields)


@pytest.mark.django_db
def test_register_creates_then_updates_and_brings_back_online():
    node = register()
    assert (node.status, node.cpu_capacity, node.labels) == (
        Node.Status.ONLINE,
        Decimal("2"),
        {"region": "eu"},
    )
    Node.objects.filter(pk=node.pk).update(status=Node.Status.OFFLINE)

    again = register(cpu_capacity=Decimal("4"), labels={})

    assert again.pk == node.pk
    again.refresh_from_db()
    assert (again.status, again.cpu_capacity, again.labels) == (Node.Status.ONLINE, Decimal("4"), {})
    assert again.last_heartbeat_at is not None


@pytest.mark.django_db
def test_register_refuses_bad_input():
    with pytest.raises(ValidationError) as info:
        register(name="nohost")
    assert "NAME@HOST" in info.value.message_dict["name"][0]
    with pytest.raises(ValidationError) as info:
        register(cpu_capacity=Decimal("0"))
    assert info.value.message_dict == {"cpu_capacity": ["must be positive"]}
    with pytest.raises(ValidationError) as info:
        register(labels="gpu=yes")
    assert list(info.value.message_dict) == ["labels"]
    assert not Node.objects.exists()


@pytest.mark.django_db
def test_heartbeat_records_usage_and_revives_an_offline_node_but_not_a_draining_one():
    node = NodeFactory(status=Node.Status.OFFLINE)
    assert node_heartbeat_record(name=node.name, cpu_percent=12.5, memory_used_mb=300, running_count=2)
    node.refresh_from_db()
    assert (node.status, node.cpu_percent, node.memory_used_mb, node.running_count) == (
        "online",
        12.5,
        300,
        2,
    )

    node_drain(name=node.name)
    node_heartbeat_record(name=node.name, cpu_percent=0, memory_used_mb=0, running_count=0)
    node.refresh_from_db()
    assert node.status == Node.Status.DRAINING
    assert node_heartbeat_record(name="ghost@h", cpu_percent=0, memory_used_mb=0, running_count=0) is False


@pytest.mark.django_db
def test_drain_and_undrain_are_conditional():
    node = NodeFactory()
    assert node_drain(name=node.name) is True
    assert node_drain(name=node.name) is False
    assert node_undrain(name=node.name) is True
    assert node_undrain(name=node.name) is False
    with pytest.raises(Node.DoesNotExist):
        node_drain(name="ghost@h")


@pytest.mark.django_db
def test_reaper_marks_only_silent_nodes_offline(settings):
    settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS = 30
    now = timezone.now()
    silent = NodeFactory(last_heartbeat_at=now - timedelta(seconds=31))
    silent_draining = NodeFactory(last_heartbeat_at=now - timedelta(minutes=5), status=Node.Status.DRAINING)
    fresh = NodeFactory(last_heartbeat_at=now)
    NodeFactory(last_heartbeat_at=now - timedelta(hours=1), status=Node.Status.OFFLINE)

    assert sorted(nodes_reap_stale()) == sorted([silent.name, silent_draining.name])

    assert set(Node.objects.filter(status="offline").values_list("name", flat=True)) >= {
        silent.name,
        silent_draining.name,
    }
    fresh.refresh_from_db()
    assert fresh.status == Node.Status.ONLINE
    assert nodes_reap_stale() == []
    # A fresh node is not taken offline by a stale-only sweep that raced its heartbeat.
    assert node_mark_offline(name=fresh.name, reason="x", stale_only=True) is False
