"""manage.py execution_cancel: cancel an execution (a running one is killed)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.management.base import get_or_fail
from jobs.models import Execution
from jobs.services import execution_cancel


class Command(BaseCommand):
    help = "Cancel a pending, queued or running execution (a running one is killed by its worker)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("execution_id")
        parser.add_argument("--reason", default="cancelled from the command line")

    def handle(self, *args: Any, **options: Any) -> None:
        execution = get_or_fail(Execution, options["execution_id"], "execution")
        if not execution_cancel(execution_id=execution.pk, reason=options["reason"]):
            raise CommandError(
                f"execution {execution.pk} is {execution.status}; only active ones can be cancelled"
            )
        self.stdout.write(self.style.SUCCESS(f"execution {execution.pk} cancelled"))
