"""Authorization used by every API view: role checks as DRF permission classes, and object scoping.

Object-level access is done by filtering, not by has_object_permission: a view builds its queryset with
scope_to_user(), so another user's object is simply not found (404) and never appears in a list.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts import roles
from accounts.selectors import user_roles

_M = TypeVar("_M", bound=Model)


def is_operator(user: Any) -> bool:
    """True for operators and admins (and superusers): they see and act on everyone's objects."""
    return bool(user_roles(user=user) & roles.OPERATOR_ROLES)


def can_submit(user: Any) -> bool:
    """True for submitters, operators and admins: they may create and change (their own) jobs."""
    return bool(user_roles(user=user) & roles.SUBMIT_ROLES)


def scope_to_user(queryset: QuerySet[_M], user: Any, owner_field: str = "owner") -> QuerySet[_M]:
    """Everything for operators and admins; only the user's own rows (by owner_field) for anyone else."""
    if not getattr(user, "is_authenticated", False):
        return queryset.none()
    if is_operator(user):
        return queryset
    return queryset.filter(**{owner_field: user})


class IsOperator(BasePermission):
    """Operators and admins only."""

    message = "This action needs the operator or admin role."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return is_operator(request.user)


class IsOperatorOrReadOnly(BasePermission):
    """Any authenticated user may read; only operators and admins may write (e.g. nodes)."""

    message = "Changing this needs the operator or admin role."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in SAFE_METHODS:
            return bool(request.user and request.user.is_authenticated)
        return is_operator(request.user)


class CanSubmit(BasePermission):
    """Any authenticated user may read; unsafe methods need the submitter role or above."""

    message = "This action needs the submitter, operator or admin role."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in SAFE_METHODS or can_submit(request.user)
