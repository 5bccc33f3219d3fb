"""API routes of this app, mounted under /api/v1/ by scheduler_project.urls."""

from django.urls import path

from accounts import api

urlpatterns = [
    path("auth/login/", api.LoginView.as_view(), name="auth-login"),
    path("auth/logout/", api.LogoutView.as_view(), name="auth-logout"),
    path("auth/logout-all/", api.LogoutAllView.as_view(), name="auth-logout-all"),
    path("auth/me/", api.MeView.as_view(), name="auth-me"),
]
