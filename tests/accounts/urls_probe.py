"""The project's URLs plus probe views built the way every API view is: scope_to_user and role classes."""

from __future__ import annotations

from django.urls import include, path
from rest_framework import generics, serializers

from accounts.permissions import CanSubmit, IsOperator, IsOperatorOrReadOnly, scope_to_user
from jobs.models import Job


class JobProbeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = ["id", "name"]


class JobProbe(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = JobProbeSerializer
    permission_classes = [CanSubmit]

    def get_queryset(self):
        return scope_to_user(Job.objects.all(), self.request.user)

    def perform_destroy(self, instance: Job) -> None:
        """Nothing is deleted: the probe only shows who got this far."""


class JobProbeList(generics.ListAPIView):
    serializer_class = JobProbeSerializer
    permission_classes = [CanSubmit]

    def get_queryset(self):
        return scope_to_user(Job.objects.order_by("id"), self.request.user)


class OperatorProbe(generics.ListAPIView):
    serializer_class = JobProbeSerializer
    permission_classes = [IsOperator]
    queryset = Job.objects.none()


class NodeLikeProbe(generics.ListCreateAPIView):
    serializer_class = JobProbeSerializer
    permission_classes = [IsOperatorOrReadOnly]
    queryset = Job.objects.none()

    def create(self, request, *args, **kwargs):
        from rest_framework.response import Response

        return Response(status=201)


urlpatterns = [
    path("", include("scheduler_project.urls")),
    path("probe/jobs/", JobProbeList.as_view()),
    path("probe/jobs/<int:pk>/", JobProbe.as_view()),
    path("probe/operator/", OperatorProbe.as_view()),
    path("probe/nodes/", NodeLikeProbe.as_view()),
]
