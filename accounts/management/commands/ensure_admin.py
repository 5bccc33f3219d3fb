"""Create the first admin user once; its password is printed once and kept in var/admin-password."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin superuser if no superuser exists (password printed once, kept under var/)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        user_model = get_user_model()
        password_file = Path(settings.BASE_DIR) / "var" / "admin-password"
        if user_model.objects.filter(is_superuser=True).exists():
            where = f" (its password is in {password_file.relative_to(settings.BASE_DIR)})"
            self.stdout.write(f"An admin user exists{where if password_file.exists() else ''}.")
            return
        password = secrets.token_urlsafe(16)
        user_model.objects.create_superuser(username=username, email="", password=password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(f"{username}\n{password}\n")
        password_file.chmod(0o600)
        self.stdout.write(
            self.style.SUCCESS(f"Created admin user '{username}' with password: {password}")
            + f"\n(kept in {password_file.relative_to(settings.BASE_DIR)})"
        )
