"""Session login pages: a login the guard refused (accounts.forms) answers 429 with Retry-After."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponseBase

from accounts.forms import GuardedAuthenticationForm

View = Callable[..., HttpResponseBase]


def login_refusal_status(view: View) -> View:
    """Wrap a LoginView: when its form was refused (throttled or locked), the page answers 429."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        if isinstance(form, GuardedAuthenticationForm) and form.refusal is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.refusal.retry_after)
        return response

    return wrapped


@login_refusal_status
def admin_login(request: HttpRequest) -> HttpResponseBase:
    """The admin's own login page (admin.site.login_form is StaffLoginForm, set by the URL conf)."""
    return admin.site.login(request)
