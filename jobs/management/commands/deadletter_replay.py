"""manage.py deadletter_replay: run a dead execution again."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.management.base import get_or_fail, service_errors
from jobs.models import DeadLetter
from jobs.services import dead_letter_replay


class Command(BaseCommand):
    help = "Replay a dead letter: a fresh execution linked to the dead one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dead_letter_id")

    def handle(self, *args: Any, **options: Any) -> None:
        dead = get_or_fail(DeadLetter, options["dead_letter_id"], "dead letter")
        with service_errors():
            execution = dead_letter_replay(dead_letter_id=dead.pk)
        self.stdout.write(
            self.style.SUCCESS(
                f"dead letter {dead.pk} replayed as execution {execution.pk} ({execution.status})"
            )
        )
