"""Writes on nodes: registration, heartbeats, drain, offline detection (their executions: the jobs core)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.functions import Now

from nodes.models import Node
from nodes.signals import capacity_available

logger = logging.getLogger(__name__)


def _capacity_available_soon(name: str) -> None:
    transaction.on_commit(lambda: capacity_available.send(sender=Node, name=name))


def parse_labels(text: str, *, field: str = "SCHEDULER_NODE_LABELS") -> dict[str, str]:
    """Parse "region=eu,gpu=no" into a dict; a malformed item raises ValueError naming the field."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{field}: {item!r} is not key=value (expected e.g. 'region=eu,gpu=no')")
        labels[key.strip()] = value.strip()
    return labels


@transaction.atomic
def node_register(
    *,
    name: str,
    hostname: str,
    ip_address: str | None,
    cpu_capacity: Decimal,
    memory_mb_capacity: int,
    labels: Mapping[str, Any],
    version: str,
    incarnation: uuid.UUID | None = None,
) -> Node:
    """Create or update the node a starting worker runs as (`incarnation`: that start's boot id), and mark
    it online."""
    errors: dict[str, str] = {}
    if "@" not in name:
        errors["name"] = f"{name!r} must be NAME@HOST (celery worker -n)"
    if cpu_capacity <= 0:
        errors["cpu_capacity"] = "must be positive"
    if memory_mb_capacity <= 0:
        errors["memory_mb_capacity"] = "must be positive"
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in labels.items()
    ):
        errors["labels"] = 'must be an object of label names to plain values, e.g. {"region": "eu"}'
    if errors:
        raise ValidationError(errors)
    node, created = Node.objects.select_for_update().update_or_create(
        name=name,
        defaults={
            "hostname": hostname,
            "ip_address": ip_address,
            "cpu_capacity": cpu_capacity,
            "memory_mb_capacity": memory_mb_capacity,
            "labels": dict(labels),
            "version": version,
            "incarnation": incarnation,
            "status": Node.Status.ONLINE,
            "last_heartbeat_at": Now(),
        },
    )
    logger.info("node %s %s: %s cpu, %s MB, labels %s", name, "registered" if created else "back online",
                cpu_capacity, memory_mb_capacity, dict(labels))  # fmt: skip
    # A returning node's worker takes over what its earlier start held (worker.liveness); capacity may
    # fit pending work now.
    _capacity_available_soon(name)
    return node


def node_runtime_record(*, name: str, labels: Mapping[str, Any], version: str) -> bool:
    """A running worker's labels or version changed (its container engine came or went): store them.
    True if the row changed (gaining a label may let pending work fit)."""
    changed = Node.objects.filter(name=name).exclude(labels=dict(labels), version=version)
    if not changed.update(labels=dict(labels), version=version):
        return False
    logger.warning("node %s: labels now %s (%s)", name, dict(labels), version)
    _capacity_available_soon(name)
    return True


@transaction.atomic
def node_heartbeat_record(*, name: str, cpu_percent: float, memory_used_mb: int, running_count: int) -> bool:
    """Store the node's live usage; a node declared offline that heartbeats again is online again."""
    nodes = Node.objects.filter(name=name)
    updated = nodes.update(
        last_heartbeat_at=Now(),
        cpu_percent=cpu_percent,
        memory_used_mb=max(0, memory_used_mb),
        running_count=max(0, running_count),
    )
    # Its lost executions stay lost (fencing is the claim token), so coming back is safe.
    if nodes.filter(status=Node.Status.OFFLINE).update(status=Node.Status.ONLINE):
        logger.warning("node %s heartbeats again: online", name)
        _capacity_available_soon(name)
    return bool(updated)


def node_drain(*, name: str) -> bool:
    """Online -> draining: no new placements; what it runs finishes. True if this call changed it."""
    changed = Node.objects.filter(name=name, status=Node.Status.ONLINE).update(status=Node.Status.DRAINING)
    if not changed and not Node.objects.filter(name=name).exists():
        raise Node.DoesNotExist(f"no node named {name!r}")
    return bool(changed)


@transaction.atomic
def node_undrain(*, name: str) -> bool:
    """Draining -> online: the node takes new work again. True if this call changed it."""
    changed = Node.objects.filter(name=name, status=Node.Status.DRAINING).update(status=Node.Status.ONLINE)
    if not changed and not Node.objects.filter(name=name).exists():
        raise Node.DoesNotExist(f"no node named {name!r}")
    if changed:
        _capacity_available_soon(name)
    return bool(changed)


def node_mark_offline(*, name: str, reason: str, stale_only: bool = False) -> bool:
    """Online/draining -> offline; with stale_only, only if its heartbeats stopped. True if this call did it.

    The jobs core then recovers what the node held (jobs.services.executions.executions_recover_offline).
    """
    nodes = Node.objects.filter(name=name, status__in=[Node.Status.ONLINE, Node.Status.DRAINING])
    if stale_only:
        nodes = nodes.filter(last_heartbeat_at__lt=Now() - _offline_after())
    # The conditional update takes the row lock placements take, so nothing is placed on it after this.
    if not nodes.update(status=Node.Status.OFFLINE):
        return False
    logger.warning("node %s offline (%s)", name, reason)
    return True


def _offline_after() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS)


def nodes_reap_stale(*, recover: Callable[[int, str], object] | None = None) -> list[str]:
    """Mark offline every node whose last heartbeat is older than SCHEDULER_NODE_OFFLINE_AFTER_SECONDS.

    `recover(node_id, reason)` runs in the same transaction as each node's change (the jobs core passes the
    recovery of what the node held), so a node is never offline with work still counted on it.
    """
    names = list(
        Node.objects.filter(
            status__in=[Node.Status.ONLINE, Node.Status.DRAINING],
            last_heartbeat_at__lt=Now() - _offline_after(),
        ).values_list("name", flat=True)
    )
    reaped = []
    for name in names:
        reason = f"node {name} missed heartbeats for {settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS:g}s"
        with transaction.atomic():
            if node_mark_offline(name=name, reason=reason, stale_only=True):
                if recover is not None:
                    recover(Node.objects.values_list("pk", flat=True).get(name=name), reason)
                reaped.append(name)
    return reaped
