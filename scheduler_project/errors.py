"""Project-wide error pages: JSON under /api/, Django's HTML pages elsewhere.

A database that is away (connection refused, terminated, reset) is a 503 with Retry-After, not a 500:
the request may succeed when repeated. scheduler_project/dbguard.py routes those errors here.
"""

from __future__ import annotations

import sys

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

# The connection failed (refused, terminated, reset) or the server gave up for a passing reason (a deadlock,
# a timeout): the same request may succeed shortly. IntegrityError, DataError and ProgrammingError are about
# the statement and stay 500s (or whatever the view makes of them).
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)

_UNAVAILABLE_PAGE = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Service unavailable</title>'
    "</head><body><h1>Service unavailable</h1><p>The database is not reachable right now. "
    "Try again in a few seconds.</p></body></html>\n"
)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404: a URL no route matches (or a route's converter refused) is JSON for API clients."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: never an HTML page for API clients; a 503 when the error was the database being away."""
    if isinstance(sys.exc_info()[1], DATABASE_UNAVAILABLE):
        return database_unavailable(request)
    if _is_api(request):
        return JsonResponse({"detail": "Internal server error."}, status=500)
    return defaults.server_error(request)


def database_unavailable(request: HttpRequest) -> HttpResponse:
    """503 + Retry-After: JSON under /api/, a small HTML page elsewhere (admin, dashboard)."""
    response: HttpResponse
    if _is_api(request):
        detail = "The database is unavailable; retry the request shortly."
        response = JsonResponse({"detail": detail}, status=503)
    else:
        response = HttpResponse(_UNAVAILABLE_PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(settings.SCHEDULER_DB_RETRY_AFTER_SECONDS)
    return response
