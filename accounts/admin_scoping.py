"""The API's access rules for the Django admin: role gates and owner scoping on top of model permissions.

Django's admin checks model permissions only (the role groups grant them, see accounts.roles). Every
ModelAdmin of the project derives from RoleScopedAdmin, which narrows them as accounts.permissions does
for the API: another user's rows are not in the queryset (their pages answer "does not exist", actions
skip them) unless the user is an operator or admin, and each admin may require roles to read or to write.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from accounts import roles
from accounts.permissions import is_operator, scope_to_user
from accounts.selectors import user_roles

ADMIN_ONLY = frozenset({roles.ADMIN})  # admins (and superusers, see user_roles)


def has_role(user: Any, wanted: frozenset[str] | None) -> bool:
    """True if `wanted` is None (no role needed) or the user holds one of those roles."""
    return wanted is None or bool(user_roles(user=user) & wanted)


def owner_pk(obj: Model, owner_field: str) -> Any:
    """The pk of the user owning `obj` through `owner_field` ("owner", "job__owner", ...)."""
    *hops, last = owner_field.split("__")
    target: Any = obj
    for hop in hops:
        target = getattr(target, hop)
    return getattr(target, f"{last}_id")


class RoleScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose model permissions also need a role (read_roles / write_roles) and, for rows owned
    through `owner_field`, ownership unless the user is an operator or admin."""

    owner_field: str | None = None  # path to the owning user; None: rows are nobody's (or everyone's)
    read_roles: frozenset[str] | None = None  # None: whoever the model permissions let in
    write_roles: frozenset[str] | None = None  # for add, change and delete; read_roles apply too

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if self.owner_field is None:
            return queryset
        return scope_to_user(queryset, request.user, owner_field=self.owner_field)

    def owns(self, request: HttpRequest, obj: Model | None) -> bool:
        """True if the user may touch `obj`: theirs, or they are an operator (or there is no object)."""
        if obj is None or self.owner_field is None or is_operator(request.user):
            return True
        return bool(owner_pk(obj, self.owner_field) == request.user.pk)

    def may_read(self, request: HttpRequest) -> bool:
        return has_role(request.user, self.read_roles)

    def may_write(self, request: HttpRequest) -> bool:
        return self.may_read(request) and has_role(request.user, self.write_roles)

    def allows(self, request: HttpRequest, roles: frozenset[str], permission: str) -> bool:
        """For an action's has_<name>_permission: the admin's read gate, one of `roles`, `permission`."""
        user: Any = request.user
        return self.may_read(request) and has_role(user, roles) and user.has_perm(permission)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.may_read(request) and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            self.may_read(request) and self.owns(request, obj) and super().has_view_permission(request, obj)
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.may_write(request) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            self.may_write(request)
            and self.owns(request, obj)
            and super().has_change_permission(request, obj)
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            self.may_write(request)
            and self.owns(request, obj)
            and super().has_delete_permission(request, obj)
        )
