"""manage.py deadletter_list: dead letters, newest first."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.models import DeadLetter


class Command(BaseCommand):
    help = "List dead letters (executions whose retries are exhausted)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--status", choices=DeadLetter.Status.values, help="only this status")

    def handle(self, *args: Any, **options: Any) -> None:
        letters = DeadLetter.objects.select_related("job", "execution").order_by("-created_at")
        if options["status"]:
            letters = letters.filter(status=options["status"])
        self.stdout.write(f"{'ID':>5}  {'JOB':<28} {'EXECUTION':>9} {'STATUS':<9} {'REPLAYS':>7}  ERROR")
        count = 0
        for dead in letters:
            job = f"{dead.job_id} {dead.job.name}"[:28]
            error = dead.error.splitlines()[0][:60] if dead.error else "-"
            line = f"{dead.pk:>5}  {job:<28} {dead.execution_id:>9} {dead.status:<9} {dead.replay_count:>7}"
            self.stdout.write(f"{line}  {error}")
            count += 1
        self.stdout.write(f"{count} dead letter(s)")
