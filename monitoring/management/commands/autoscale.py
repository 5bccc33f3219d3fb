"""`manage.py autoscale`: run a command whenever the desired worker count of a label set changes."""

from __future__ import annotations

import shlex
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, InterfaceError, close_old_connections

from monitoring.autoscale import Autoscaler
from monitoring.selectors.autoscale import selector_parse


class Command(BaseCommand):
    help = (
        "Poll the desired-workers signal of one node label set and run --command (with {n} replaced by "
        "the count) when it changes: up at once, down after --cooldown seconds."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--min", type=int, required=True, dest="minimum", help="fewest workers")
        parser.add_argument("--max", type=int, required=True, dest="maximum", help="most workers")
        parser.add_argument(
            "--command",
            required=True,
            dest="template",
            help="e.g. 'docker compose up -d --scale worker={n}' (split like a shell, run without one)",
        )
        parser.add_argument("--labels", default="", help="the label set, k=v,... (default: none)")
        parser.add_argument("--interval", type=float, default=15.0, help="seconds between polls")
        parser.add_argument("--cooldown", type=float, default=300.0, help="seconds before scaling down")
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds the command may take")
        parser.add_argument("--once", action="store_true", help="poll once, act, and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        scaler = self._scaler(options)
        interval = options["interval"]
        try:
            while True:
                ran = self._tick(scaler, once=options["once"])
                if options["once"]:
                    if ran is False:
                        raise CommandError("the scaling command failed")
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            self.stdout.write("autoscale: stopped")

    def _tick(self, scaler: Autoscaler, *, once: bool) -> bool | None:
        close_old_connections()  # a long-lived loop: no connection outlives a database restart
        try:
            return scaler.tick()
        except (DatabaseError, InterfaceError) as exc:
            if once:
                raise CommandError(f"database unavailable: {exc}") from None
            self.stderr.write(f"autoscale: database unavailable, next poll retries: {exc}")
            close_old_connections()
            return None

    def _scaler(self, options: dict[str, Any]) -> Autoscaler:
        minimum, maximum, template = options["minimum"], options["maximum"], options["template"]
        if minimum < 0 or maximum < max(minimum, 1):
            raise CommandError(
                f"--min must be 0 or more and --max at least 1 and --min (got {minimum}, {maximum})"
            )
        if options["interval"] <= 0 or options["cooldown"] < 0 or options["timeout"] <= 0:
            raise CommandError("--interval and --timeout must be more than 0, --cooldown 0 or more")
        try:
            words = shlex.split(template)
        except ValueError as exc:
            raise CommandError(f"--command: {exc}") from None
        if not words or not any("{n}" in word for word in words):
            raise CommandError("--command must name a program and contain {n} (the worker count)")
        try:
            selector = selector_parse(options["labels"])
        except ValueError as exc:
            raise CommandError(f"--labels: {exc}") from None
        return Autoscaler(
            template=template,
            minimum=minimum,
            maximum=maximum,
            selector=selector,
            cooldown=options["cooldown"],
            timeout=options["timeout"],
            log=lambda line: self.stdout.write(f"{time.strftime('%H:%M:%S')} autoscale: {line}"),
        )
