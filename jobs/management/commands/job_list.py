"""manage.py job_list: jobs with their status, schedule and next run."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.models import Job


class Command(BaseCommand):
    help = "List jobs with their schedule and next run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--status", choices=Job.Status.values, help="only jobs in this status")
        parser.add_argument("--all", action="store_true", help="include archived jobs")

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = Job.objects.select_related("schedule", "owner").order_by("pk")
        if options["status"]:
            jobs = jobs.filter(status=options["status"])
        elif not options["all"]:
            jobs = jobs.exclude(status=Job.Status.ARCHIVED)
        self.stdout.write(f"{'ID':>5}  {'NAME':<24} {'KIND':<7} {'STATUS':<10} {'SCHEDULE':<32} NEXT RUN")
        count = 0
        for job in jobs:
            schedule = getattr(job, "schedule", None)
            next_run = schedule.next_run_at if schedule else None
            next_text = f"{next_run:%Y-%m-%d %H:%M:%S %Z}" if next_run else "-"
            self.stdout.write(
                f"{job.pk:>5}  {job.name[:24]:<24} {job.kind:<7} {job.status:<10} "
                f"{str(schedule or 'triggered only')[:32]:<32} {next_text}"
            )
            count += 1
        self.stdout.write(f"{count} job(s)")
