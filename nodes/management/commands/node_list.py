"""manage.py node_list: nodes with capacity, allocated and used resources, and cluster totals."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.models import Node
from nodes.placement import format_labels
from nodes.selectors import cluster_usage

ROW = "{name:<28} {status:<9} {cpu:>19} {mem:>23} {run:>7}  {beat:<19}  {labels}"


class Command(BaseCommand):
    help = "List nodes: status, cpu and memory (allocated/capacity, used), running executions, labels."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--status", choices=Node.Status.values, help="only nodes with this status")

    def handle(self, *args: Any, status: str | None = None, **options: Any) -> None:
        usage = cluster_usage()
        rows = [row for row in usage.nodes if status is None or row.status == status]
        if not usage.nodes:
            raise CommandError("no node registered yet: start a worker (celery -A scheduler_project worker)")
        self.stdout.write(
            ROW.format(
                name="NAME",
                status="STATUS",
                cpu="CPU alloc/cap (used)",
                mem="MEM MB alloc/cap (used)",
                run="RUNNING",
                beat="LAST HEARTBEAT",
                labels="LABELS",
            )  # fmt: skip
        )
        for row in rows:
            beat = row.last_heartbeat_at.strftime("%Y-%m-%d %H:%M:%S") if row.last_heartbeat_at else "-"
            self.stdout.write(
                ROW.format(
                    name=row.name,
                    status=row.status,
                    cpu=f"{row.cpu_allocated}/{row.cpu_capacity} ({row.cpu_used:g})",
                    mem=f"{row.memory_mb_allocated}/{row.memory_mb_capacity} ({row.memory_mb_used})",
                    run=row.running,
                    beat=beat,
                    labels=format_labels(row.labels or {}),
                )
            )
        counts = ", ".join(f"{n} {s}" for s, n in usage.nodes_by_status.items())
        self.stdout.write(
            f"cluster ({counts}): cpu {usage.cpu_allocated}/{usage.cpu_capacity} allocated, "
            f"{usage.cpu_used:g} used; memory {usage.memory_mb_allocated}/{usage.memory_mb_capacity} MB "
            f"allocated, {usage.memory_mb_used} MB used; {usage.running} running"
        )
