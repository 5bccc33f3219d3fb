"""manage.py job_submit: create a job from a JSON file or from flags, or many from a JSON list."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.management.base import service_errors
from jobs.models import Job
from jobs.services import ItemsPermissionDenied, job_create, jobs_create_bulk


class Command(BaseCommand):
    help = (
        "Submit a job: --file job.json (the job_create fields, schedule included) or flags. A file holding a "
        "JSON list submits every job in it, all or none (flags apply to each)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--owner", required=True, help="username of the job's owner")
        parser.add_argument(
            "--file",
            help="a JSON object with the job's fields (flags override it), or a list of such objects",
        )
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
        flags = self._flag_data(options)
        username = options["owner"]
        owner = get_user_model()._default_manager.filter(username=username).first()
        if owner is None:
            raise CommandError(f"owner {username!r} does not exist")
        if isinstance(data, list):
            self._submit_all(owner, data, flags)
            return
        data.update(flags)
        for required in ("name", "kind", "payload"):
            if required not in data:
                raise CommandError(f"{required} is required (a flag or a key of --file)")
        data.pop("owner", None)
        with service_errors():
            try:
                job = job_create(owner=owner, **data)
            except TypeError as exc:  # an unknown key in the file
                raise CommandError(f"bad job fields: {exc}") from None
        self.stdout.write(self.style.SUCCESS(f"created job {job.pk} ({job.name}){_next_run(job)}"))

    def _submit_all(self, owner: Any, items: list[Any], flags: dict[str, Any]) -> None:
        """Every job of the list through the bulk service: all are created, or none (errors by item)."""
        # As for one job: flags override the file, and an "owner" key is ignored (--owner decides).
        items = [{**_without_owner(item), **flags} if isinstance(item, dict) else item for item in items]
        try:
            created = jobs_create_bulk(owner=owner, items=items).jobs
        except ValidationError as exc:
            raise CommandError(_item_errors(exc, len(items))) from None
        except ItemsPermissionDenied as exc:
            where = ", ".join(f"item {field.split('.')[0]}" for field in exc.fields)
            raise CommandError(f"permission denied: {exc} ({where}); no job was created") from None
        jobs = Job.objects.select_related("schedule").in_bulk([job.pk for job in created])
        for job in (jobs[one.pk] for one in created):
            self.stdout.write(self.style.SUCCESS(f"created job {job.pk} ({job.name}){_next_run(job)}"))
        self.stdout.write(f"{len(created)} job(s) created")

    def _file_data(self, path: str) -> dict[str, Any] | list[Any]:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict | list):
            raise CommandError(f"{path} must hold a JSON object or a list of them")
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


def _without_owner(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "owner"}


def _next_run(job: Job) -> str:
    schedule = getattr(job, "schedule", None)
    if schedule and schedule.next_run_at:
        return f", next run {schedule.next_run_at:%Y-%m-%d %H:%M:%S %Z}"
    return ""


def _item_errors(exc: ValidationError, count: int) -> str:
    """A bulk refusal as one line per bad item ("item 3: payload.command: ...")."""
    lines: dict[str, list[str]] = {}
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
    for key, messages in errors.items():
        index, _, field = key.partition(".")
        label = f"item {index}" if index.isdigit() else "the list"
        lines.setdefault(label, []).append(f"{field}: {' '.join(messages)}" if field else " ".join(messages))
    bad = sum(label != "the list" for label in lines)
    head = f"{bad} of {count} jobs are invalid" if bad else "the list is refused"
    body = "\n".join(f"  {label}: {'; '.join(parts)}" for label, parts in lines.items())
    return f"{head}; no job was created:\n{body}"
