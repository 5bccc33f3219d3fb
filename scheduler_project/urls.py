from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

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

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("dashboard/", dashboard, name="dashboard"),
    path("dashboard/fragment/", dashboard_fragment, name="dashboard-fragment"),
    path("dashboard/login/", DashboardLoginView.as_view(), name="dashboard-login"),
    path("dashboard/logout/", LogoutView.as_view(next_page="dashboard-login"), name="dashboard-logout"),
]

handler404 = "scheduler_project.errors.not_found"
handler500 = "scheduler_project.errors.server_error"
