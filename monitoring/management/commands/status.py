"""`manage.py status`: jobs, executions, nodes, queues, beat and the latest failures at a glance."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from jobs.models import Execution
from monitoring.selectors.summary import FAILURE_STATUSES, summary_compute


def _counts(counts: dict[str, int]) -> str:
    shown = [f"{name} {n}" for name, n in counts.items() if n]
    return ", ".join(shown) or "none"


class Command(BaseCommand):
    help = "Print an overview of jobs, executions, nodes, queues, beat and recent failures."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--failures", type=int, default=5, help="how many recent failures to list")

    def handle(self, *args: Any, **options: Any) -> None:
        s = summary_compute()
        out = self.stdout
        out.write(f"jobs:        {_counts(s['jobs_by_status'])}")
        window = s["window_seconds"] // 60
        executions = _counts(s["executions_by_status"])
        out.write(f"executions:  {executions} (active now; ended in the last {window} min)")
        oldest = s["oldest_pending_seconds"]
        pending = f"{s['executions_pending']}" + (f" (oldest {oldest:.0f}s)" if oldest else "")
        out.write(f"pending:     {pending}")
        out.write(f"dead letters: {_counts(s['dead_letters_by_status'])}")
        beat = s["beat"]
        beat_line = f"leader {beat.get('leader')}" if beat.get("healthy") else "NO LEADER (beat down?)"
        out.write(f"beat:        {beat_line}")
        out.write(f"alerts:      {s['alerts_firing']} firing")
        out.write(f"nodes:       {_counts(s['nodes_by_status'])}")
        for n in s["nodes"]:
            out.write(
                f"  {n['name']:<32} {n['status']:<9} cpu {n['cpu_allocated']:.2f}/{n['cpu_capacity']:.2f} "
                f"(used {n['cpu_used']:.2f})  mem {n['memory_mb_allocated']}/{n['memory_mb_capacity']} MB "
                f"(used {n['memory_mb_used']})  running {n['running']}"
            )
        if s["queues"] is None:
            out.write(self.style.ERROR("queues:      broker unreachable"))
        else:
            out.write("queues:      " + ", ".join(f"{q} {d}" for q, d in s["queues"].items()))
        failures = (
            Execution.objects.filter(status__in=FAILURE_STATUSES, finished_at__isnull=False)
            .select_related("job")
            .order_by("-finished_at")[: options["failures"]]
        )
        out.write("recent failures:" if failures else "recent failures: none")
        for e in failures:
            error = (e.error or "").splitlines()[0][:100] if e.error else ""
            out.write(f"  #{e.pk} {e.job.name} {e.status} at {e.finished_at:%Y-%m-%d %H:%M:%S} {error}")
