"""Fixtures of the API tests: users in each role with real knox tokens, and objects they own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from jobs.models import DeadLetter, Execution, Job
from nodes.models import ResourceAllocation
from tests.factories import JobFactory, NodeFactory

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    """Login throttles, lockouts and dispatch debounce keys live in the test Redis: start each test empty."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Argon2 costs about a second per user on a loaded 2-core machine; these tests are not about it."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
    ]


def token_client(user: Any) -> APIClient:
    """An APIClient carrying a real knox token of `user` (stored hashed, like one from login)."""
    _, token = AuthToken.objects.create(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def api_login(db) -> Callable[[str], APIClient]:
    """An APIClient carrying a token obtained through POST /api/v1/auth/login/."""

    def login(username: str) -> APIClient:
        client = APIClient()
        response = client.post(
            "/api/v1/auth/login/", {"username": username, "password": PASSWORD}, format="json"
        )
        assert response.status_code == 200, response.content
        client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
        return client

    return login


@pytest.fixture
def alice(make_user) -> Any:
    return make_user("alice", "submitter")


@pytest.fixture
def bob(make_user) -> Any:
    return make_user("bob", "submitter")


@pytest.fixture
def olga(make_user) -> Any:
    """An operator."""
    return make_user("olga", "operator")


@pytest.fixture
def vic(make_user) -> Any:
    """A viewer: reads own objects only."""
    return make_user("vic", "viewer")


@pytest.fixture
def as_alice(alice) -> APIClient:
    return token_client(alice)


@pytest.fixture
def as_bob(bob) -> APIClient:
    return token_client(bob)


@pytest.fixture
def as_olga(olga) -> APIClient:
    return token_client(olga)


@pytest.fixture
def as_vic(vic) -> APIClient:
    return token_client(vic)


@pytest.fixture
def node(db) -> Any:
    return NodeFactory(name="n1@host1")


def job_body(**overrides: Any) -> dict[str, Any]:
    """A valid job submission: a python echo job every minute."""
    body: dict[str, Any] = {
        "name": "echo",
        "kind": "python",
        "payload": {"handler": "echo", "kwargs": {"message": "hi"}},
        "schedule": {"type": "interval", "every_seconds": 60},
    }
    body.update(overrides)
    return body


def in_one_hour() -> str:
    return (timezone.now() + timedelta(hours=1)).isoformat()


@pytest.fixture
def world(alice, bob, vic, node) -> dict[str, Any]:
    """One job of alice and one of bob, each with an execution, a dead letter and an allocation."""
    objects: dict[str, Any] = {}
    for owner in (alice, bob, vic):
        job: Any = JobFactory(owner=owner, name=f"{owner.username}-job")
        dead = Execution.objects.create(
            job=job, scheduled_for=timezone.now() - timedelta(minutes=5), status=Execution.Status.DEAD
        )
        running = Execution.objects.create(
            job=job, scheduled_for=timezone.now(), status=Execution.Status.QUEUED, node=node
        )
        ResourceAllocation.objects.create(node=node, execution=running, cpu=job.cpu, memory_mb=job.memory_mb)
        letter = DeadLetter.objects.create(job=job, execution=dead, error="boom")
        objects[owner.username] = {"job": job, "execution": running, "dead": dead, "letter": letter}
    return objects


__all__ = ["Job", "in_one_hour", "job_body", "token_client"]
