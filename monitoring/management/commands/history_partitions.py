"""`manage.py history_partitions`: list the monthly partitions of the history; create ahead; prune now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import DatabaseError

from monitoring.selectors.history import history_partitions_list
from monitoring.services import history_partitions_ensure, history_prune


class Command(BaseCommand):
    help = (
        "List the monthly partitions of executions and their output (rows are the planner's estimate); "
        "--ensure creates this month's and SCHEDULER_HISTORY_MONTHS_AHEAD more, --prune applies the "
        "retention now (what beat does hourly and daily)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--ensure", action="store_true", help="create the partitions ahead now")
        parser.add_argument("--prune", action="store_true", help="drop the months past the retention now")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["ensure"]:
                created = history_partitions_ensure()
                self.stdout.write("created: " + (", ".join(created) or "nothing (all there)"))
            if options["prune"]:
                pruned = history_prune()
                dropped = ", ".join(pruned.months_dropped) or "none"
                self.stdout.write(
                    f"pruned: months dropped {dropped}; {pruned.executions} executions gone, "
                    f"{pruned.executions_kept} kept (dead letters, active runs)"
                )
        except DatabaseError as exc:  # e.g. the lock was not granted in time: nothing half done
            self.stderr.write(self.style.ERROR(f"history_partitions: {exc}".strip()))
            raise SystemExit(1) from None
        self.stdout.write(f"{'table':<30} {'partition':<44} {'from':<10} {'rows':>12} {'size':>10}")
        for p in history_partitions_list():
            start = f"{p.month.year:04d}-{p.month.month:02d}" if p.month else "default"
            rows = "?" if p.rows < 0 else f"{p.rows:,}"
            self.stdout.write(f"{p.table:<30} {p.name:<44} {start:<10} {rows:>12} {p.bytes / 1e6:>8.1f}MB")
