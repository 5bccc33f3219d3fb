from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from accounts.forms import StaffLoginForm
from accounts.views import admin_login, login_refusal_status
from monitoring.views import DashboardLoginView, dashboard, dashboard_fragment, healthz, metrics, readyz

api_v1: list[URLPattern | URLResolver] = [
    path("", include("accounts.urls")),
    path("", include("jobs.urls")),
    path("", include("nodes.urls")),
    path("", include("monitoring.urls")),
    # The schema and its Swagger UI (assets from drf-spectacular-sidecar, no internet) are open to all.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[AllowAny]),
        name="swagger-ui",
    ),
]

# Session logins check passwords like POST auth/login/: one throttle and lockout (accounts.services).
admin.site.login_form = StaffLoginForm

urlpatterns = [
    path("admin/login/", admin_login),  # before the admin's own route, which it wraps (429 when refused)
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("dashboard/", dashboard, name="dashboard"),
    path("dashboard/fragment/", dashboard_fragment, name="dashboard-fragment"),
    path("dashboard/login/", login_refusal_status(DashboardLoginView.as_view()), name="dashboard-login"),
    path("dashboard/logout/", LogoutView.as_view(next_page="dashboard-login"), name="dashboard-logout"),
]

handler404 = "scheduler_project.errors.not_found"
handler500 = "scheduler_project.errors.server_error"
