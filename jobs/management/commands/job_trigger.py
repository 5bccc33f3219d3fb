"""manage.py job_trigger: run a job now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.management.base import get_or_fail, service_errors
from jobs.models import Job
from jobs.services import job_trigger


class Command(BaseCommand):
    help = "Run a job now: a new execution, placed and published at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id")

    def handle(self, *args: Any, **options: Any) -> None:
        job = get_or_fail(Job, options["job_id"], "job")
        with service_errors():
            execution = job_trigger(job=job)
        self.stdout.write(self.style.SUCCESS(f"execution {execution.pk} of job {job.pk}: {execution.status}"))
