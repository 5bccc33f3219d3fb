"""manage.py execution_show: one execution with its times, result and output."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.management.base import get_or_fail
from jobs.models import Execution


class Command(BaseCommand):
    help = "Show an execution: status, node, times, exit code, error and output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("execution_id")

    def handle(self, *args: Any, **options: Any) -> None:
        execution = get_or_fail(Execution, options["execution_id"], "execution")
        rows = [
            ("execution", execution.pk),
            ("job", f"{execution.job_id} ({execution.job.name})"),
            ("status", execution.status),
            ("trigger", execution.trigger),
            ("slot", execution.scheduled_for),
            ("attempt", execution.attempt),
            ("node", execution.node or "-"),
            ("queued", execution.queued_at or "-"),
            ("started", execution.started_at or "-"),
            ("finished", execution.finished_at or "-"),
            (
                "duration",
                f"{execution.duration_seconds:.3f}s" if execution.duration_seconds is not None else "-",
            ),
            ("exit code", execution.exit_code if execution.exit_code is not None else "-"),
            ("progress", execution.progress if execution.progress is not None else "-"),
            ("pending", execution.pending_reason or "-"),
            ("error", execution.error or "-"),
            ("retry of", execution.retry_of_id or "-"),
            ("replay of", execution.replay_of_id or "-"),
        ]
        for label, value in rows:
            self.stdout.write(f"{label + ':':<11} {value}")
        truncated = " (truncated)" if execution.output_truncated else ""
        self.stdout.write(f"--- output{truncated} ---")
        self.stdout.write(execution.output or "(none)")
