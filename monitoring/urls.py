"""API routes of this app, mounted under /api/v1/ by scheduler_project.urls."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from monitoring import api

router = SimpleRouter()
router.register("alert-rules", api.AlertRuleViewSet, basename="alert-rule")
router.register("alerts", api.AlertViewSet, basename="alert")

urlpatterns = [
    path("executions/<str:pk>/log/", api.ExecutionLogView.as_view(), name="execution-log"),
    path("logs/", api.LogListView.as_view(), name="logs"),
    path("metrics/", api.MetricsSummaryView.as_view(), name="metrics-summary"),
    path("autoscale/", api.AutoscaleView.as_view(), name="autoscale"),
    *router.urls,
]
