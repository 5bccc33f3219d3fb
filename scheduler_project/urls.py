from django.contrib import admin
from django.urls import include, path

from monitoring.views import healthz

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("jobs.urls")),
    path("", include("nodes.urls")),
    path("", include("monitoring.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("healthz", healthz, name="healthz"),
]
