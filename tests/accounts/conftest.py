"""Fixtures for the accounts tests: users in each role, token clients, a clean login cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _clean_login_counters() -> Iterator[None]:
    """Throttle history and lockout counters live in the Redis cache: start and end each test empty."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def login(client: APIClient, username: str, password: str = PASSWORD, ip: str = "127.0.0.1") -> Any:
    return client.post(
        "/api/v1/auth/login/", {"username": username, "password": password}, format="json", REMOTE_ADDR=ip
    )


@pytest.fixture
def token_client(make_user) -> Callable[..., APIClient]:
    """An APIClient carrying a real knox token obtained through the login endpoint."""

    def make(username: str, *roles: str) -> APIClient:
        make_user(username, *roles)
        client = APIClient()
        response = login(client, username)
        assert response.status_code == 200, response.content
        client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
        return client

    return make
