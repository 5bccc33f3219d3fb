"""`manage.py execution_follow <id>`: print an execution's output as it arrives, until it ends."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, InterfaceError, close_old_connections, connection

from jobs.models import Execution
from monitoring.selectors import log_read

MAX_DB_ERRORS = 30  # consecutive failed polls before giving up


class Command(BaseCommand):
    help = "Print an execution's output as it is written, until the execution ends."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("execution_id", type=int)
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
        parser.add_argument("--offset", type=int, default=0, help="start at this character offset")
        parser.add_argument(
            "--timeout", type=float, default=0, help="give up after this many seconds (0: never)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        execution_id, offset = options["execution_id"], options["offset"]
        if offset < 0:
            raise CommandError("--offset must be 0 or more")
        deadline = time.monotonic() + options["timeout"] if options["timeout"] > 0 else None
        errors = 0
        while True:
            if not connection.in_atomic_block:  # inside a caller's transaction the connection is theirs
                close_old_connections()
            try:
                piece = log_read(execution_id=execution_id, offset=offset)
            except Execution.DoesNotExist:
                raise CommandError(f"execution {execution_id} does not exist") from None
            except (DatabaseError, InterfaceError) as exc:
                errors += 1
                if errors >= MAX_DB_ERRORS:
                    raise CommandError(f"database unavailable: {exc}") from None
                self.stderr.write(f"database error, retrying: {exc}")
                time.sleep(options["interval"])
                continue
            errors = 0
            if piece.text:
                self.stdout.write(piece.text, ending="")
                self.stdout.flush()
            offset = piece.next_offset
            if piece.complete:
                self.stderr.write(f"execution {execution_id} ended: {piece.status}")
                return
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(
                    f"execution {execution_id} still {piece.status} after {options['timeout']:g}s"
                )
            time.sleep(options["interval"])
