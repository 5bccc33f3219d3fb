"""Writes of the accounts app: the first admin, role permissions, login failure counting."""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from knox.models import AuthToken
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle

from accounts import roles, selectors

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


# --- Login guard: the one password check of every login (API token, admin and dashboard sessions) ---
#
# Two counters in Django's cache (Redis), each a fixed window that starts at its first use: attempts per
# client address (SCHEDULER_LOGIN_THROTTLE) and failures per username (SCHEDULER_LOGIN_MAX_FAILURES in
# SCHEDULER_LOGIN_LOCKOUT_SECONDS). An attempt takes its number (INCR) before the password is checked, so a
# burst of parallel guesses cannot all pass a check-then-count race: at most the allowed number are checked.


class LoginRefused(Exception):  # noqa: N818 - reads as a state, like Django's PermissionDenied
    """A login refused before its password was checked; it may succeed after retry_after seconds."""

    message = "Too many login attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(self.message)
        self.retry_after = retry_after


class LoginThrottled(LoginRefused):
    """Too many login attempts from this client address (SCHEDULER_LOGIN_THROTTLE), any usernames."""

    message = "Too many login attempts from this address"


class LoginLocked(LoginRefused):
    """Too many failed logins for this username: refused even with the right password till the window ends."""

    message = "Too many failed logins for this user"


def _digest(text: str) -> str:
    # Hashed: client input never becomes a raw cache key.
    return hashlib.sha256(text.encode()).hexdigest()


def _failures_key(username: str) -> str:
    # Case variants and stray spaces share one counter.
    return f"accounts:login-failures:{_digest(username.strip().lower())}"


def _window_take(key: str, window: int) -> int:
    """Count one use in key's window (opened by the first use) and return its number; atomic in Redis."""
    cache.add(key, 0, timeout=window)
    try:
        return int(cache.incr(key))
    except ValueError:  # the window expired between add and incr: this use opens a new one
        cache.set(key, 1, timeout=window)
        return 1


def _address_take(request: HttpRequest) -> None:
    # SCHEDULER_LOGIN_THROTTLE, in DRF's rate format ("5/min").
    allowed, window = ScopedRateThrottle().parse_rate(str(api_settings.DEFAULT_THROTTLE_RATES["login"]))
    if allowed is None or window is None:
        return
    # DRF's reading of the client address: X-Forwarded-For only through SCHEDULER_NUM_PROXIES proxies.
    address = BaseThrottle().get_ident(cast(Any, request)) or ""
    if _window_take(f"accounts:login-attempts:{_digest(address)}", window) > allowed:
        raise LoginThrottled(retry_after=window)


def login_attempt(*, request: HttpRequest | None, username: str, password: str) -> AbstractBaseUser | None:
    """The user for these credentials, or None; raises LoginThrottled or LoginLocked past the limits.

    Every login calls this: POST auth/login/, /admin/login/ and /dashboard/login/ (accounts.forms), so one
    address and one username have one budget of guesses across all of them.
    """
    if request is not None:
        _address_take(request)
    key = _failures_key(username)
    lockout = settings.SCHEDULER_LOGIN_LOCKOUT_SECONDS
    attempt = _window_take(key, lockout)
    if attempt > settings.SCHEDULER_LOGIN_MAX_FAILURES:
        raise LoginLocked(retry_after=lockout)
    user = authenticate(request, username=username, password=password)
    if user is None:
        logger.warning("failed login for %r (%d in the current window)", username, attempt)
        return None
    cache.delete(key)
    return user


# --- Ending a user's logins everywhere ------------------------------------------------------------


def user_logout_everywhere(*, user: Any) -> tuple[int, int]:
    """Revoke every API token of the user and end their browser sessions: (tokens, sessions) removed."""
    # Found before the transaction: decoding every session holds no lock while it runs.
    session_keys = selectors.user_session_keys(user=user)
    sessions = selectors.session_store_class().get_model_class().objects.filter(session_key__in=session_keys)
    with transaction.atomic():
        tokens, _ = AuthToken.objects.filter(user=user).delete()
        ended, _ = sessions.delete()
    return tokens, ended
