"""Execution nodes (one per celery worker) and the resources reserved on them."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q


class Node(models.Model):
    """A celery worker process (NAME@HOST) that runs executions."""

    class Status(models.TextChoices):
        ONLINE = "online"  # heartbeating, takes new work
        DRAINING = "draining"  # finishes what it runs, takes nothing new
        OFFLINE = "offline"  # stopped, or missed heartbeats; its work was recovered

    name = models.CharField(max_length=255, unique=True, help_text="Celery hostname, NAME@HOST")
    hostname = models.CharField(max_length=255)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    cpu_capacity = models.DecimalField(max_digits=7, decimal_places=3, default=Decimal("1"))
    memory_mb_capacity = models.PositiveIntegerField(default=1024)
    labels = models.JSONField(default=dict, blank=True)
    version = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ONLINE)
    registered_at = models.DateTimeField(auto_now_add=True)
    # A fresh value at every worker start (its boot id): a claim made by an earlier start is known as such.
    incarnation = models.UUIDField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Live usage, as reported by the last heartbeat.
    cpu_percent = models.FloatField(default=0)
    memory_used_mb = models.PositiveIntegerField(default=0)
    running_count = models.PositiveIntegerField(default=0)
    # What active allocations reserve here, kept by nodes.placement in the same transaction as the
    # allocation rows: placement reserves with one conditional UPDATE of these (no lock on other nodes).
    cpu_allocated = models.DecimalField(max_digits=9, decimal_places=3, default=Decimal("0"))
    memory_mb_allocated = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["status", "last_heartbeat_at"])]
        constraints = [
            models.CheckConstraint(condition=Q(cpu_capacity__gte=0), name="node_cpu_capacity_gte_0"),
            models.CheckConstraint(condition=Q(cpu_allocated__gte=0), name="node_cpu_allocated_gte_0"),
            models.CheckConstraint(
                condition=Q(memory_mb_allocated__gte=0), name="node_memory_mb_allocated_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def queue_name(self) -> str:
        """The broker queue only this node consumes."""
        return f"node.{self.name}"


class ResourceAllocation(models.Model):
    """CPU and memory reserved for one execution on one node, from placement to release."""

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="allocations")
    execution = models.OneToOneField(
        # No constraint: executions are partitioned (jobs/models.py says why); retention deletes these rows.
        "jobs.Execution",
        on_delete=models.CASCADE,
        related_name="allocation",
        db_constraint=False,
    )
    cpu = models.DecimalField(max_digits=7, decimal_places=3, default=Decimal("0"))
    memory_mb = models.PositiveIntegerField(default=0)
    allocated_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-allocated_at"]
        indexes = [
            # The counter repair sums active allocations per node: this partial index serves it.
            models.Index(fields=["node"], condition=Q(released_at__isnull=True), name="alloc_active_by_node"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(cpu__gte=0), name="alloc_cpu_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.cpu} cpu / {self.memory_mb} MB on {self.node_id} for execution {self.execution_id}"

    @property
    def active(self) -> bool:
        return self.released_at is None
