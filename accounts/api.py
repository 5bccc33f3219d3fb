"""Authentication endpoints: token login (knox), logout, logout everywhere, and who am I."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from knox import views as knox_views
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from scheduler_project.api.base import ApiViewMixin


class UserSerializer(serializers.ModelSerializer):
    """A user as the API shows it: identity, roles and permissions (all read-only)."""

    roles = serializers.SerializerMethodField()
    permissions = serializers.SerializerMethodField()
    email = serializers.CharField(read_only=True)  # may be blank: not format "email" in the schema

    class Meta:
        model = get_user_model()
        fields = ["id", "username", "email", "first_name", "last_name", "is_staff", "roles", "permissions"]
        read_only_fields = fields

    def get_roles(self, user: Any) -> list[str]:
        return sorted(selectors.user_roles(user=user))

    def get_permissions(self, user: Any) -> list[str]:
        return selectors.user_permissions(user=user)


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


_TOKEN_RESPONSE = inline_serializer(
    name="LoginResponse",
    fields={
        "token": serializers.CharField(),
        "expiry": serializers.DateTimeField(),
        "user": UserSerializer(),
    },
)


class LoginView(ApiViewMixin, knox_views.LoginView):
    """Exchange a username and password for a new expiring token (one per client; stored hashed)."""

    # Credentials come only from the body: a stale token header must not make login fail.
    authentication_classes: list = []
    permission_classes = [AllowAny]
    # Throttle and lockout are services.login_attempt's, shared with the admin and dashboard logins.
    throttle_classes: list = []

    @extend_schema(
        request=LoginSerializer,
        responses={
            200: _TOKEN_RESPONSE,
            400: OpenApiResponse(description="Missing fields, or a body that is not bounded JSON"),
            401: OpenApiResponse(description="Wrong username or password"),
            413: OpenApiResponse(description="Request body over SCHEDULER_MAX_REQUEST_BYTES"),
            429: OpenApiResponse(description="Throttled, or locked after repeated failures"),
        },
        auth=[],
    )
    def post(self, request: Request, format: str | None = None) -> Response:  # noqa: A002 - knox's signature
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            user = services.login_attempt(
                request=request._request,
                username=serializer.validated_data["username"],
                password=serializer.validated_data["password"],
            )
        except services.LoginRefused as refused:
            raise Throttled(wait=refused.retry_after, detail=f"{refused.message}; try again later.") from None
        if user is None:
            raise AuthenticationFailed("Unable to log in with the provided username and password.")
        request.user = cast(Any, user)  # knox's LoginView issues the token to request.user
        return super().post(request, format=format)

    def get_authenticate_header(self, request: Request) -> str:
        # A 401 from login still names the scheme clients must use afterwards.
        return "Token"


class LogoutView(ApiViewMixin, knox_views.LogoutView):
    """Revoke the token this request carries, at once."""

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, format: str | None = None) -> Response:  # noqa: A002
        return super().post(request, format=format)


class LogoutAllView(ApiViewMixin, knox_views.LogoutAllView):
    """Revoke every token of the current user and end their browser sessions (all clients)."""

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, format: str | None = None) -> Response:  # noqa: A002
        services.user_logout_everywhere(user=request.user)
        user_logged_out.send(sender=request.user.__class__, request=request, user=request.user)
        return self.get_post_response(request)


class MeView(ApiViewMixin, APIView):
    """The authenticated user, their roles and permissions."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=UserSerializer)
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data, status=status.HTTP_200_OK)
