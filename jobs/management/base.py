"""Shared bits of the jobs management commands: object lookup and turning service errors into CommandError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import CommandError
from django.db import models

M = TypeVar("M", bound=models.Model)


def get_or_fail(model: type[M], pk: Any, label: str) -> M:
    """The object with this id, or a CommandError saying it does not exist."""
    try:
        return model._default_manager.get(pk=int(pk))
    except (ValueError, TypeError):
        raise CommandError(f"{label} id must be a number, not {pk!r}") from None
    except model.DoesNotExist:  # type: ignore[attr-defined]
        raise CommandError(f"{label} {pk} does not exist") from None


def validation_message(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """Report a service's ValidationError / PermissionDenied as a clean CommandError."""
    try:
        yield
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    except PermissionDenied as exc:
        raise CommandError(f"permission denied: {exc}") from None
