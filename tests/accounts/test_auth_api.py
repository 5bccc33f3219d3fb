"""Token login, logout, me, expiry, lockout and throttling through APIClient with real knox tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from knox.models import AuthToken
from rest_framework.throttling import ScopedRateThrottle

from tests.accounts.conftest import PASSWORD, login

ME = "/api/v1/auth/me/"


def test_login_returns_token_expiry_and_user(api, make_user):
    make_user("alice", "submitter")
    response = login(api, "alice")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expiry", "user"}
    assert body["user"]["username"] == "alice"
    assert body["user"]["roles"] == ["submitter"]
    expected = timezone.now() + timedelta(hours=settings.SCHEDULER_TOKEN_TTL_HOURS)
    assert abs(parse_datetime(body["expiry"]) - expected) < timedelta(minutes=5)


def test_token_is_stored_hashed_and_each_login_is_its_own_token(api, make_user):
    user = make_user("alice")
    first = login(api, "alice").json()["token"]
    second = login(api, "alice").json()["token"]
    assert first != second
    digests = list(AuthToken.objects.filter(user=user).values_list("digest", flat=True))
    assert len(digests) == 2
    assert first not in digests
    assert second not in digests


def test_me_shows_user_roles_and_permissions(token_client):
    client = token_client("olga", "operator")
    response = client.get(ME)
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "olga"
    assert body["roles"] == ["operator"]
    assert "nodes.change_node" in body["permissions"]
    assert "accounts.change_user" not in body["permissions"]


def test_logout_revokes_the_token_at_once(token_client):
    client = token_client("alice")
    assert client.get(ME).status_code == 200
    assert client.post("/api/v1/auth/logout/").status_code == 204
    response = client.get(ME)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_logout_all_revokes_every_client(api, make_user):
    make_user("alice")
    tokens = [login(api, "alice").json()["token"] for _ in range(2)]
    api.credentials(HTTP_AUTHORIZATION=f"Token {tokens[0]}")
    assert api.post("/api/v1/auth/logout-all/").status_code == 204
    for token in tokens:
        api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        assert api.get(ME).status_code == 401


def test_expired_token_is_refused(token_client):
    client = token_client("alice")
    ttl = timedelta(hours=settings.SCHEDULER_TOKEN_TTL_HOURS)
    with time_machine.travel(timezone.now() + ttl - timedelta(minutes=1)):
        assert client.get(ME).status_code == 200
    with time_machine.travel(timezone.now() + ttl + timedelta(minutes=1)):
        response = client.get(ME)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("header", [None, "Token not-a-real-token", "Bearer abc"])
def test_request_without_valid_credentials_is_401_with_www_authenticate(api, db, header):
    if header:
        api.credentials(HTTP_AUTHORIZATION=header)
    response = api.get(ME)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_wrong_password_is_401_and_missing_fields_are_400(api, make_user):
    make_user("alice")
    wrong = login(api, "alice", "not the password")
    assert wrong.status_code == 401
    assert "token" not in wrong.json()
    missing = api.post("/api/v1/auth/login/", {"username": "alice"}, format="json")
    assert missing.status_code == 400
    assert "password" in missing.json()


def test_a_stale_token_header_does_not_break_login(api, make_user):
    make_user("alice")
    api.credentials(HTTP_AUTHORIZATION="Token revoked-long-ago")
    assert login(api, "alice").status_code == 200


def test_sixth_wrong_password_in_a_window_is_refused_even_when_correct(api, make_user):
    make_user("alice")
    make_user("bob")
    # A new address per attempt: the per-client throttle never applies, only the per-username lockout.
    for attempt in range(settings.SCHEDULER_LOGIN_MAX_FAILURES):
        assert login(api, "alice", "wrong", ip=f"10.0.0.{attempt + 1}").status_code == 401
    refused = login(api, "alice", PASSWORD, ip="10.0.1.1")
    assert refused.status_code == 429
    assert "Retry-After" in refused
    # The lock is per username (case-insensitive): another user still logs in from anywhere.
    assert login(api, "ALICE", PASSWORD, ip="10.0.1.2").status_code == 429
    assert login(api, "bob", PASSWORD, ip="10.0.1.3").status_code == 200


def test_lockout_counter_expires_with_its_window(api, make_user, redis_client):
    make_user("alice")
    login(api, "alice", "wrong")
    keys = redis_client.keys("*login-failures*")
    assert len(keys) == 1
    # Redis expires the counter: the lock lifts by itself when the window ends.
    assert 0 < redis_client.ttl(keys[0]) <= settings.SCHEDULER_LOGIN_LOCKOUT_SECONDS


def test_success_resets_the_failure_count(api, make_user):
    make_user("alice")
    for round_ in range(2):
        for attempt in range(settings.SCHEDULER_LOGIN_MAX_FAILURES - 1):
            assert login(api, "alice", "wrong", ip=f"10.{round_}.0.{attempt + 1}").status_code == 401
        assert login(api, "alice", PASSWORD, ip=f"10.{round_}.1.1").status_code == 200


def test_login_is_throttled_per_client(api, make_user):
    allowed, _ = ScopedRateThrottle().parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"])
    for n in range(allowed + 1):
        make_user(f"user-{n}")
    statuses = [login(api, f"user-{n}", ip="10.9.9.9").status_code for n in range(allowed + 1)]
    assert statuses[:allowed] == [200] * allowed
    assert statuses[allowed] == 429
    assert login(api, "user-0", ip="10.9.9.10").status_code == 200


def test_passwords_are_hashed_with_argon2(make_user):
    assert make_user("alice").password.startswith("argon2")


def test_a_forged_forwarded_for_header_does_not_dodge_the_throttle(api, make_user):
    allowed, _ = ScopedRateThrottle().parse_rate(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"])
    make_user("alice")
    statuses = [
        api.post(
            "/api/v1/auth/login/",
            {"username": "alice", "password": PASSWORD},
            format="json",
            REMOTE_ADDR="10.8.8.8",
            HTTP_X_FORWARDED_FOR=f"192.0.2.{n}",
        ).status_code
        for n in range(allowed + 1)
    ]
    assert statuses[-1] == 429
