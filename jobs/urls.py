"""API routes of this app, mounted under /api/v1/ by scheduler_project.urls."""

from rest_framework.routers import SimpleRouter

from jobs.api.views import DeadLetterViewSet, ExecutionViewSet, JobViewSet

router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("dead-letters", DeadLetterViewSet, basename="dead-letter")

urlpatterns = router.urls
