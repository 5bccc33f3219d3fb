"""API routes of this app, mounted under /api/v1/ by scheduler_project.urls."""

from django.urls import path  # noqa: F401 - routes are added as the app's API grows

urlpatterns: list = []
