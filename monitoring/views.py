"""Health, metrics and dashboard pages. Health is open to probes; metrics and the dashboard are not."""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from accounts.forms import LoginForm
from accounts.permissions import is_operator
from monitoring import health
from monitoring.charts import percent, throughput_svg
from monitoring.metrics import metrics_exposition
from monitoring.selectors.dashboard import dashboard_cached
from scheduler_project.dbrouter import replica_reads

READY_CHECKS = ["database", "broker", "workers", "beat"]
REFRESH_SECONDS = 5


def _checks_response(names: list[str]) -> JsonResponse:
    checks = health.run_checks(names)
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if ok else "fail", "checks": checks}, status=200 if ok else 503)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and reaches its database and broker."""
    return _checks_response(["database", "broker"])


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to do work: database, broker, an online worker node and a beat leader seen recently."""
    return _checks_response(READY_CHECKS)


def _metrics_allowed(request: HttpRequest) -> bool:
    token = settings.SCHEDULER_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())
    return is_operator(request.user)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; needs the bearer token (SCHEDULER_METRICS_TOKEN) or an operator session."""
    if not _metrics_allowed(request):
        response = HttpResponse("metrics need a bearer token or an operator session\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The session and the user were read on the primary above; only the numbers come from the replica.
    return HttpResponse(replica_reads(metrics_exposition)(), content_type=CONTENT_TYPE_LATEST)


def _link(admin_name: str, api_path: str, pk: int) -> str:
    """The object's admin page when the admin has it registered, else its API URL."""
    try:
        return reverse(admin_name, args=[pk])
    except NoReverseMatch:
        return f"/api/v1/{api_path}/{pk}/"


def _context(request: HttpRequest) -> dict[str, Any]:
    data = dict(dashboard_cached(user=request.user))
    data["nodes"] = [
        {
            **node,
            "cpu_allocated_pct": percent(node["cpu_allocated"], node["cpu_capacity"]),
            "cpu_used_pct": percent(node["cpu_used"], node["cpu_capacity"]),
            "memory_allocated_pct": percent(node["memory_mb_allocated"], node["memory_mb_capacity"]),
            "memory_used_pct": percent(node["memory_mb_used"], node["memory_mb_capacity"]),
        }
        for node in data["nodes"]
    ]
    data["running"] = [{**row, "progress_pct": percent(row["progress"] or 0, 100)} for row in data["running"]]
    data["failures"] = [
        {**row, "url": _link("admin:jobs_execution_change", "executions", row["id"])}
        for row in data["failures"]
    ]
    data["dead_letters"] = [
        {**row, "url": _link("admin:jobs_deadletter_change", "dead-letters", row["id"])}
        for row in data["dead_letters"]
    ]
    data["chart"] = throughput_svg(data["series"])
    data["finished_24h"] = sum(row["total"] for row in data["series"])
    data["failed_24h"] = sum(row["failed"] for row in data["series"])
    data["refresh_seconds"] = REFRESH_SECONDS
    data["is_operator"] = is_operator(request.user)
    return data


class DashboardLoginView(LoginView):
    """Session login for the dashboard (any user; the admin's login page admits staff only).

    Throttled and locked like the API's login (accounts.forms.LoginForm); the URL conf makes a refusal a 429.
    """

    template_name = "monitoring/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True


@login_required(login_url="dashboard-login")
@require_GET
@replica_reads
def dashboard(request: HttpRequest) -> HttpResponse:
    """The dashboard page; its body reloads itself from dashboard_fragment every few seconds."""
    return render(request, "monitoring/dashboard.html", _context(request))


@login_required(login_url="dashboard-login")
@require_GET
@replica_reads
def dashboard_fragment(request: HttpRequest) -> HttpResponse:
    """The dashboard's body alone, for the page's refresh script."""
    return render(request, "monitoring/_dashboard_body.html", _context(request))
