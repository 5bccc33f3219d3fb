"""manage.py job_pause: pause a job."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.management.base import get_or_fail
from jobs.models import Job
from jobs.services import job_pause


class Command(BaseCommand):
    help = "Pause a job."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id")

    def handle(self, *args: Any, **options: Any) -> None:
        job = get_or_fail(Job, options["job_id"], "job")
        if not job_pause(job=job):
            raise CommandError(f"job {job.pk} is {job.status}; it cannot be paused")
        self.stdout.write(self.style.SUCCESS(f"job {job.pk} paused"))
