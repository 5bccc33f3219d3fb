"""Reads of the accounts app: a user's roles and permissions, their browser sessions."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone

from accounts import roles


def user_roles(*, user: Any) -> frozenset[str]:
    """The role names the user holds (a superuser is an admin); cached on the user object per request."""
    if not getattr(user, "is_authenticated", False):
        return frozenset()
    cached = getattr(user, "_scheduler_roles", None)
    if cached is None:
        names = set(user.groups.filter(name__in=roles.ROLES).values_list("name", flat=True))
        if user.is_superuser:
            names.add(roles.ADMIN)
        cached = frozenset(names)
        user._scheduler_roles = cached
    return cached


def user_permissions(*, user: Any) -> list[str]:
    """Every model permission the user holds, as sorted "app_label.codename" strings."""
    if not getattr(user, "is_authenticated", False):
        return []
    return sorted(user.get_all_permissions())


def session_store_class() -> type[SessionStore]:
    """The database session store SESSION_ENGINE names (scheduler_project.sessions)."""
    store: type[SessionStore] = import_module(settings.SESSION_ENGINE).SessionStore
    return store


def user_session_keys(*, user: Any) -> list[str]:
    """Keys of the user's unexpired browser sessions.

    The user id lives inside each session's signed data, so every unexpired session is decoded: one pass
    over rows that only browser logins create, paid by the rare logout-all, and no index to keep in step.
    """
    store_class = session_store_class()
    store = store_class()
    user_id = user._meta.pk.value_to_string(user)  # how django.contrib.auth.login stores it
    rows = store_class.get_model_class().objects.filter(expire_date__gt=timezone.now())
    return [
        key
        for key, data in rows.values_list("session_key", "session_data").iterator(chunk_size=2000)
        if store.decode(data).get(SESSION_KEY) == user_id
    ]
