"""manage.py job_submit: create a job from a JSON file or from flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.management.base import service_errors
from jobs.services import job_create


class Command(BaseCommand):
    help = "Submit a job: --file job.json (the job_create fields, schedule included) or flags."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--owner", required=True, help="username of the job's owner")
        parser.add_argument("--file", help="a JSON object with the job's fields (flags override it)")
        parser.add_argument("--name")
        parser.add_argument("--kind", choices=["shell", "http", "python"])
        parser.add_argument("--payload", help="the payload as JSON")
        parser.add_argument(
            "--command",
            nargs=argparse.REMAINDER,
            help="shell job argv, given last: everything after it is the command (--command sh -c 'echo hi')",
        )
        parser.add_argument("--handler", help="python job handler (shorthand for --payload)")
        parser.add_argument("--every", type=int, help="interval schedule: every N seconds")
        parser.add_argument("--cron", help="cron schedule: 5 fields")
        parser.add_argument("--timezone", default=None, help="IANA time zone of the cron schedule")
        parser.add_argument("--at", help="once schedule: ISO-8601 time")
        parser.add_argument("--priority", type=int)
        parser.add_argument("--timeout", type=int, dest="timeout_seconds")
        parser.add_argument("--max-retries", type=int, dest="max_retries")
        parser.add_argument("--concurrency", dest="concurrency_policy")

    def handle(self, *args: Any, **options: Any) -> None:
        data = self._file_data(options["file"]) if options["file"] else {}
        data.update(self._flag_data(options))
        username = options["owner"]
        owner = get_user_model()._default_manager.filter(username=username).first()
        if owner is None:
            raise CommandError(f"owner {username!r} does not exist")
        for required in ("name", "kind", "payload"):
            if required not in data:
                raise CommandError(f"{required} is required (a flag or a key of --file)")
        data.pop("owner", None)
        with service_errors():
            try:
                job = job_create(owner=owner, **data)
            except TypeError as exc:  # an unknown key in the file
                raise CommandError(f"bad job fields: {exc}") from None
        schedule = getattr(job, "schedule", None)
        when = (
            f", next run {schedule.next_run_at:%Y-%m-%d %H:%M:%S %Z}"
            if schedule and schedule.next_run_at
            else ""
        )
        self.stdout.write(self.style.SUCCESS(f"created job {job.pk} ({job.name}){when}"))

    def _file_data(self, path: str) -> dict[str, Any]:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CommandError(f"{path} must hold a JSON object")
        return data

    def _flag_data(self, options: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key in ("name", "kind", "priority", "timeout_seconds", "max_retries", "concurrency_policy"):
            if options[key] is not None:
                data[key] = options[key]
        if options["payload"]:
            try:
                data["payload"] = json.loads(options["payload"])
            except json.JSONDecodeError as exc:
                raise CommandError(f"--payload is not valid JSON: {exc}") from None
        elif options["command"]:
            data["payload"] = {"command": options["command"]}
            data.setdefault("kind", "shell")
        elif options["handler"]:
            data["payload"] = {"handler": options["handler"]}
            data.setdefault("kind", "python")
        if options["every"] is not None:
            data["schedule"] = {"type": "interval", "every_seconds": options["every"]}
        elif options["cron"]:
            data["schedule"] = {
                "type": "cron",
                "cron_expression": options["cron"],
                "timezone": options["timezone"] or "UTC",
            }
        elif options["at"]:
            data["schedule"] = {
                "type": "once",
                "run_at": options["at"],
                "timezone": options["timezone"] or "UTC",
            }
        return data
