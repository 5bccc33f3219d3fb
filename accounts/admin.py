"""Admin of auth's groups (the roles) and knox's tokens, re-registered behind the admin role.

Editing a group changes what every member of a role may do, and a token minted here logs in as its user:
both are for the admin role only (as auth.* is, accounts.roles), whatever permissions a group was given by
hand; minting a token, which impersonates any user, is for superusers alone.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import admin as auth_admin  # registers theirs first: replaced here
from django.contrib.auth.models import Group
from django.http import HttpRequest
from knox import admin as knox_admin  # registers theirs first: replaced here
from knox.models import AuthToken

from accounts.admin_scoping import ADMIN_ONLY, RoleScopedAdmin

admin.site.unregister([Group, AuthToken])


@admin.register(Group)
class GroupAdmin(RoleScopedAdmin, auth_admin.GroupAdmin):
    read_roles = ADMIN_ONLY


@admin.register(AuthToken)
class AuthTokenAdmin(RoleScopedAdmin, knox_admin.AuthTokenAdmin):
    read_roles = ADMIN_ONLY

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser and super().has_add_permission(request)
