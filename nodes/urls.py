"""API routes of this app, mounted under /api/v1/ by scheduler_project.urls."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from nodes.api import AllocationViewSet, ClusterUsageView, NodeViewSet

router = SimpleRouter()
router.register("nodes", NodeViewSet, basename="node")
router.register("allocations", AllocationViewSet, basename="allocation")

urlpatterns = [
    path("resources/usage/", ClusterUsageView.as_view(), name="resources-usage"),
    *router.urls,
]
