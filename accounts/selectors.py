"""Reads of the accounts app: a user's roles and permissions."""

from __future__ import annotations

from typing import Any

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
