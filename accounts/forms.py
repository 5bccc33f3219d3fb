"""Session login forms (admin, dashboard): the password is checked by services.login_attempt, like the API."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.views.decorators.debug import sensitive_variables

from accounts import services


class GuardedAuthenticationForm(AuthenticationForm):
    """AuthenticationForm checked through the login guard; a refused attempt keeps why in `refusal`."""

    refusal: services.LoginRefused | None = None

    # As long as the API's LoginSerializer allows: hashing a huge password costs the server, not the client.
    password: forms.Field = forms.CharField(
        label="Password",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    @sensitive_variables()
    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            try:
                user = services.login_attempt(request=self.request, username=username, password=password)
            except services.LoginRefused as refused:
                self.refusal = refused
                message = f"{refused.message}; try again in {refused.retry_after} seconds."
                raise ValidationError(message, code="login_refused") from None
            if user is None:
                raise self.get_invalid_login_error()
            self.user_cache = cast(Any, user)  # the project's User (AUTH_USER_MODEL)
            self.confirm_login_allowed(self.user_cache)
        return self.cleaned_data


class LoginForm(GuardedAuthenticationForm):
    """The dashboard's login: any active user."""

    error_messages = {**AuthenticationForm.error_messages, "invalid_login": "Wrong username or password."}


class StaffLoginForm(GuardedAuthenticationForm, AdminAuthenticationForm):
    """The admin's login (admin.site.login_form): active staff only."""
