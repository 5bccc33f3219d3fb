"""Writes of the accounts app: the first admin, role permissions, login failure counting."""

from __future__ import annotations

import hashlib
import logging
import secrets

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from accounts import roles

logger = logging.getLogger(__name__)


@transaction.atomic
def admin_ensure(*, username: str = "admin") -> tuple[bool, str]:
    """Create a superuser with a random password unless one exists: (created, password)."""
    user_model = get_user_model()
    if user_model.objects.filter(is_superuser=True).exists():
        return False, ""
    password = secrets.token_urlsafe(16)
    user = user_model.objects.create_superuser(username=username, email="", password=password)
    admin_group, _ = Group.objects.get_or_create(name=roles.ADMIN)
    user.groups.add(admin_group)
    return True, password


def roles_sync(*, using: str = "default") -> dict[str, list[str]]:
    """Create the role groups and grant each the permissions it lacks; returns what was granted.

    Additive on purpose: permissions an administrator added to a group by hand are kept. Runs after every
    `migrate`, so a permission defined later by another app (jobs.run_shell) is granted once it exists.
    """
    granted: dict[str, list[str]] = {}
    with transaction.atomic(using=using):
        for role, wanted in roles.ROLE_PERMISSIONS.items():
            group, _ = Group.objects.db_manager(using).get_or_create(name=role)
            missing = list(_permissions_matching(wanted).using(using).exclude(group=group))
            if missing:
                group.permissions.add(*missing)
                granted[role] = sorted(f"{p.content_type.app_label}.{p.codename}" for p in missing)
    return granted


def _permissions_matching(wanted: list[str]) -> QuerySet[Permission]:
    query = Q(pk__in=[])
    for name in wanted:
        app_label, _, codename = name.partition(".")
        if codename == "*":
            query |= Q(content_type__app_label=app_label)
        else:
            query |= Q(content_type__app_label=app_label, codename=codename)
    return Permission.objects.filter(query).select_related("content_type")


# --- Login lockout: failures per username counted in Django's cache (Redis) ---------------------


class LoginLocked(Exception):  # noqa: N818 - reads as a state, like Django's PermissionDenied
    """Too many failed logins for this username: refused until the window ends."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"locked for up to {retry_after} s")
        self.retry_after = retry_after


def _failures_key(username: str) -> str:
    # Hashed: user input never becomes a raw cache key, and case variants share one counter.
    digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()
    return f"accounts:login-failures:{digest}"


def login_failures_count(*, username: str) -> int:
    """Failed logins recorded for username in the current window."""
    return int(cache.get(_failures_key(username), 0))


def login_failure_record(*, username: str) -> int:
    """Count one failed login; the window starts at the first failure. Returns the new count."""
    key = _failures_key(username)
    window = settings.SCHEDULER_LOGIN_LOCKOUT_SECONDS
    cache.add(key, 0, timeout=window)
    try:
        return int(cache.incr(key))
    except ValueError:  # the window expired between add and incr: this failure opens a new one
        cache.set(key, 1, timeout=window)
        return 1


def login_authenticate(
    *, request: HttpRequest | None, username: str, password: str
) -> AbstractBaseUser | None:
    """The user for these credentials, or None; raises LoginLocked after too many failures.

    A locked username is refused before its password is checked, so even the right password fails
    until the window ends: guessing cannot continue at any rate.
    """
    if login_failures_count(username=username) >= settings.SCHEDULER_LOGIN_MAX_FAILURES:
        raise LoginLocked(retry_after=settings.SCHEDULER_LOGIN_LOCKOUT_SECONDS)
    user = authenticate(request, username=username, password=password)
    if user is None:
        count = login_failure_record(username=username)
        logger.warning("failed login for %r (%d in the current window)", username, count)
        return None
    cache.delete(_failures_key(username))
    return user
