"""`manage.py ensure_admin` creates the admin once, prints its password once and keeps it under var/."""

from __future__ import annotations

from io import StringIO

from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command


def test_ensure_admin_creates_once_and_keeps_the_password(db, settings, tmp_path):
    settings.SCHEDULER_VAR_DIR = tmp_path
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    username, password = (tmp_path / "admin-password").read_text().split()
    assert username == "admin"
    assert password in out.getvalue()
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0
    user = authenticate(username="admin", password=password)
    assert user is not None
    assert user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == ["admin"]

    again = StringIO()
    call_command("ensure_admin", stdout=again)
    assert password not in again.getvalue()
    assert "exists" in again.getvalue()
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
