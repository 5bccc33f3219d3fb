"""Create the first admin user once; its password is printed once and kept in var/admin-password."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from accounts import services


class Command(BaseCommand):
    help = "Create the admin superuser if no superuser exists (password printed once, kept under var/)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        password_file = Path(settings.SCHEDULER_VAR_DIR) / "admin-password"
        try:
            created, password = services.admin_ensure(username=username)
        except DatabaseError as exc:
            raise CommandError(f"cannot reach the database to create the admin user: {exc}") from exc
        if not created:
            where = f" (its password is in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"An admin user exists{where}.")
            return
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.write_text(f"{username}\n{password}\n")
        self.stdout.write(
            self.style.SUCCESS(f"Created admin user '{username}' with password: {password}")
            + f"\n(kept in {password_file})"
        )
