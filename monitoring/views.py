"""Health endpoints: open to load balancers and orchestrators, no authentication."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from monitoring import health


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and reaches its database and broker."""
    checks = health.run_checks(["database", "broker"])
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if ok else "fail", "checks": checks}, status=200 if ok else 503)
