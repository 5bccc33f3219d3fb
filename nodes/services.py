"""Writes on nodes and allocations: registration, heartbeats, drain, release, failure recovery."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from nodes.models import Node, ResourceAllocation

logger = logging.getLogger(__name__)

# Executions that hold a node: recovered when the node goes away.
_HELD_STATUSES = ("queued", "running")


def _pending_dispatch_soon() -> None:
    from jobs.dispatch import pending_dispatch_soon  # jobs imports nodes: import at call time

    pending_dispatch_soon()


def allocation_release(*, execution_id: int) -> bool:
    """Release the execution's active allocation (idempotent); True if this call released one."""
    # One conditional UPDATE is atomic by itself: no transaction (or savepoint inside the caller's) needed.
    released = ResourceAllocation.objects.filter(execution_id=execution_id, released_at__isnull=True).update(
        released_at=timezone.now()
    )
    if released:
        # Capacity freed: pending executions may fit now.
        transaction.on_commit(_pending_dispatch_soon)
    return bool(released)


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
) -> Node:
    """Create or update the node a starting worker runs as, and mark it online."""
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
            "status": Node.Status.ONLINE,
            "last_heartbeat_at": Now(),
        },
    )
    logger.info("node %s %s: %s cpu, %s MB, labels %s", name, "registered" if created else "back online",
                cpu_capacity, memory_mb_capacity, dict(labels))  # fmt: skip
    # A returning node's old executions were already recovered; capacity may fit pending work now.
    transaction.on_commit(_pending_dispatch_soon)
    return node


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
        transaction.on_commit(_pending_dispatch_soon)
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
        transaction.on_commit(_pending_dispatch_soon)
    return bool(changed)


def node_recover_executions(*, node_id: int, reason: str) -> int:
    """Hand every queued/running execution of an offline node back to the jobs core; returns the count."""
    from jobs.models import Execution
    from jobs.services import execution_mark_lost, execution_requeue

    held = list(
        Execution.objects.filter(node_id=node_id, status__in=_HELD_STATUSES)
        .order_by("pk")
        .values_list("pk", "status")
    )
    recovered = 0
    for pk, status in held:
        if status == "queued":
            # Never started: placed again elsewhere without using up an attempt.
            recovered += execution_requeue(execution_id=pk, reason=reason)
        else:
            # Running: lost, and the job's retry policy decides about a next attempt.
            recovered += execution_mark_lost(execution_id=pk, reason=reason)
    # Anything left (an execution already finished, or not held any more) must not keep capacity.
    ResourceAllocation.objects.filter(node_id=node_id, released_at__isnull=True).exclude(
        execution__status__in=_HELD_STATUSES
    ).update(released_at=timezone.now())
    return recovered


@transaction.atomic
def node_mark_offline(*, name: str, reason: str, stale_only: bool = False) -> bool:
    """Online/draining -> offline and recover its executions; with stale_only, only if heartbeats stopped."""
    nodes = Node.objects.filter(name=name, status__in=[Node.Status.ONLINE, Node.Status.DRAINING])
    if stale_only:
        nodes = nodes.filter(last_heartbeat_at__lt=Now() - _offline_after())
    # The conditional update takes the row lock placements take, so nothing is placed on it after this.
    if not nodes.update(status=Node.Status.OFFLINE):
        return False
    node_id = Node.objects.values_list("pk", flat=True).get(name=name)
    count = node_recover_executions(node_id=node_id, reason=reason)
    logger.warning("node %s offline (%s): %d execution(s) handed to recovery", name, reason, count)
    return True


def _offline_after() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS)


def nodes_reap_stale() -> list[str]:
    """Mark offline every node whose last heartbeat is older than SCHEDULER_NODE_OFFLINE_AFTER_SECONDS."""
    names = list(
        Node.objects.filter(
            status__in=[Node.Status.ONLINE, Node.Status.DRAINING],
            last_heartbeat_at__lt=Now() - _offline_after(),
        ).values_list("name", flat=True)
    )
    reaped = []
    for name in names:
        reason = f"node {name} missed heartbeats for {settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS:g}s"
        if node_mark_offline(name=name, reason=reason, stale_only=True):
            reaped.append(name)
    return reaped


def executions_reconcile_broker(*, older_than_seconds: float) -> list[int]:
    """Republish executions queued longer than older_than_seconds whose message the broker lost."""
    from jobs.models import Execution
    from nodes.broker import broker_execution_ids

    rows = list(
        Execution.objects.filter(
            status="queued",
            queued_at__lt=Now() - timedelta(seconds=older_than_seconds),
            node__status__in=[Node.Status.ONLINE, Node.Status.DRAINING],  # an offline node's go to the reaper
        )
        .order_by("queued_at")
        .values_list("pk", "node__name")
    )
    if not rows:
        return []
    present = broker_execution_ids(queue_names={f"node.{name}" for _, name in rows} | {"default"})
    missing = [pk for pk, _ in rows if pk not in present]
    if not missing:
        return []
    from jobs.dispatch import execution_republish

    # A message consumed while we looked is republished too: the worker's conditional claim drops it.
    republished = [pk for pk in missing if execution_republish(execution_id=pk)]
    logger.warning("reconciler: %d queued execution(s) missing from the broker republished", len(republished))
    return republished
