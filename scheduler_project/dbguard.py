"""The database going away answers 503 + Retry-After, never a 500; a safe read is retried once first.

Django turns an exception into a response in two places, and both are covered here:

- raised by a view (DRF's included: its handler leaves these errors alone) or while rendering its
  template: `process_exception` below. GET/HEAD/OPTIONS run the view once more on a fresh connection;
  anything else, or a second failure, answers 503 at once. Writes are never repeated here: a client
  repeats a create with the same Idempotency-Key (docs/api.md).
- raised by a middleware (the session saved in SessionMiddleware.process_response, a lookup done
  there): `convert_exception_to_response` makes a 500 of it, through handler500 (which answers 503,
  scheduler_project/errors.py) or, with DEBUG on, the technical 500 page. `got_request_exception` marks
  the request and the middleware replaces that 500 on its way out. (Django's session store reports such
  an error while saving as "the session was deleted", a 400; scheduler_project/sessions.py re-raises it.)

Either way the connections are closed, so the next request opens a fresh one instead of failing again.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from django.core.signals import got_request_exception
from django.db import DatabaseError, connections
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase
from django.urls import ResolverMatch

from scheduler_project.errors import DATABASE_UNAVAILABLE, database_unavailable

logger = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MARK = "_scheduler_database_unavailable"


@receiver(got_request_exception, dispatch_uid="scheduler_project.dbguard")
def _mark_database_unavailable(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    # Sent from inside Django's `except` block: sys.exc_info() is the error being turned into a 500.
    if request is not None and isinstance(sys.exc_info()[1], DATABASE_UNAVAILABLE):
        setattr(request, _MARK, True)


def connections_close() -> bool:
    """Close this thread's database connections; False when one is inside a transaction (left open)."""
    fresh = True
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            fresh = False  # the caller's transaction owns it; atomic() drops it when it unwinds
            continue
        # Closing a connection whose server is gone can fail too; it is dropped all the same.
        with contextlib.suppress(DatabaseError):
            conn.close()
    return fresh


class DatabaseUnavailableMiddleware:
    """503 + Retry-After for OperationalError / InterfaceError; one retry of a safe read."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if getattr(request, _MARK, False):
            connections_close()
            if response.status_code == 500:  # DEBUG's technical page; handler500 already gave a 503
                response = database_unavailable(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        fresh = connections_close()
        match = request.resolver_match
        if request.method in SAFE_METHODS and fresh and match is not None:
            logger.info("database error on %s %s, retrying once: %s", request.method, request.path, exception)
            try:
                return self._view_again(request, match)
            except DATABASE_UNAVAILABLE as again:
                connections_close()
                exception = again
        logger.warning("database unavailable on %s %s: %s", request.method, request.path, exception)
        return database_unavailable(request)

    def _view_again(self, request: HttpRequest, match: ResolverMatch) -> HttpResponseBase:
        response = match.func(request, *match.args, **match.kwargs)
        # Render here, so a database error while rendering is this retry's (Django would not render a
        # response returned for an error it met while rendering the first one).
        render = getattr(response, "render", None)
        if callable(render):
            response = render()
        return response
