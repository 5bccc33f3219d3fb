"""Session logins (admin, dashboard) share the API login's throttle and lockout; logout-all ends sessions.

Each test is an attack from issue 11 run against the product through Django's test client (real
PostgreSQL sessions, the throttle and lockout counters in the test Redis database).
"""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from rest_framework.settings import api_settings
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from accounts import services
from tests.accounts.conftest import PASSWORD, login

ADMIN_LOGIN = "/admin/login/"
DASHBOARD_LOGIN = "/dashboard/login/"
SESSION_LOGINS = [ADMIN_LOGIN, DASHBOARD_LOGIN]
ME = "/api/v1/auth/me/"


def _allowed_per_address() -> int:
    allowed, _ = ScopedRateThrottle().parse_rate(str(api_settings.DEFAULT_THROTTLE_RATES["login"]))
    assert allowed is not None
    return allowed


def session_login(client: Client, url: str, username: str, password: str = PASSWORD, ip: str = "127.0.0.1"):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=ip)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def staff(make_user):
    """A staff user: the admin's login admits staff only, the dashboard's anyone."""
    return make_user("alice", "operator", is_staff=True)


@pytest.mark.parametrize("url", SESSION_LOGINS)
def test_forty_wrong_passwords_from_one_address_are_throttled(staff, url):
    client = Client()
    statuses = [session_login(client, url, "alice", f"guess-{n}").status_code for n in range(40)]
    checked = min(_allowed_per_address(), settings.SCHEDULER_LOGIN_MAX_FAILURES)
    assert statuses[:checked] == [200] * checked  # the form again, "wrong password"
    assert set(statuses[checked:]) == {429}
    refused = session_login(client, url, "alice")  # even the right password, from that address
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert b"Too many" in refused.content
    assert not logged_in(client)


@pytest.mark.parametrize("url", SESSION_LOGINS)
def test_wrong_passwords_from_many_addresses_lock_the_username(staff, make_user, url):
    client = Client()
    for n in range(40):
        response = session_login(client, url, "alice", f"guess-{n}", ip=f"10.1.{n // 250}.{n % 250 + 1}")
        expected = 200 if n < settings.SCHEDULER_LOGIN_MAX_FAILURES else 429
        assert response.status_code == expected, n
    refused = session_login(client, url, "alice", ip="10.2.0.1")
    assert refused.status_code == 429
    assert b"Too many failed logins for this user" in refused.content
    assert not logged_in(client)
    # The lock is the username's: another user logs in there at once.
    make_user("bob", is_staff=True)
    assert session_login(Client(), url, "bob", ip="10.2.0.2").status_code == 302


@pytest.mark.parametrize("url", SESSION_LOGINS)
def test_a_user_locked_out_through_the_api_cannot_log_in_by_session(api, staff, url):
    for n in range(settings.SCHEDULER_LOGIN_MAX_FAILURES):
        assert login(api, "alice", "wrong", ip=f"10.3.0.{n + 1}").status_code == 401
    assert login(api, "alice", ip="10.3.1.1").status_code == 429
    # The attack: log in at the session login instead, then use the API with the session.
    browser = Client()
    refused = session_login(browser, url, "alice", ip="10.3.1.2")
    assert refused.status_code == 429
    assert b"Too many failed logins for this user" in refused.content
    assert not logged_in(browser)
    assert browser.get(ME).status_code == 401


@pytest.mark.parametrize("url", SESSION_LOGINS)
def test_a_user_locked_out_by_session_cannot_log_in_through_the_api(api, staff, url):
    for n in range(settings.SCHEDULER_LOGIN_MAX_FAILURES):
        assert session_login(Client(), url, "alice", "wrong", ip=f"10.4.0.{n + 1}").status_code == 200
    refused = login(api, "alice", ip="10.4.1.1")
    assert refused.status_code == 429
    assert "Retry-After" in refused
    other = ADMIN_LOGIN if url == DASHBOARD_LOGIN else DASHBOARD_LOGIN
    assert session_login(Client(), other, "alice", ip="10.4.1.2").status_code == 429


def test_api_and_session_logins_share_one_count_per_address(make_user):
    allowed = _allowed_per_address()
    for n in range(allowed + 1):
        make_user(f"user-{n}", is_staff=True)
    ip = "10.5.0.1"
    statuses = []
    for n in range(allowed):  # every path in turn, each a correct login of its own user
        if n % 3 == 0:
            statuses.append(login(APIClient(), f"user-{n}", ip=ip).status_code)
        else:
            statuses.append(
                session_login(Client(), SESSION_LOGINS[n % 3 - 1], f"user-{n}", ip=ip).status_code
            )
    assert set(statuses) <= {200, 302}
    assert session_login(Client(), DASHBOARD_LOGIN, f"user-{allowed}", ip=ip).status_code == 429
    assert login(APIClient(), f"user-{allowed}", ip=ip).status_code == 429


def test_logout_all_ends_the_users_browser_sessions(api, staff, make_user):
    dashboard, admin = Client(), Client()
    assert session_login(dashboard, DASHBOARD_LOGIN, "alice", ip="10.6.0.1").status_code == 302
    assert session_login(admin, ADMIN_LOGIN, "alice", ip="10.6.0.2").status_code == 302
    make_user("bob")
    bystander = Client()
    assert session_login(bystander, DASHBOARD_LOGIN, "bob", ip="10.6.0.3").status_code == 302
    assert dashboard.get("/dashboard/").status_code == 200
    assert admin.get("/admin/").status_code == 200
    assert dashboard.get(ME).status_code == 200  # the API takes the session as credentials

    token = login(api, "alice", ip="10.6.0.4").json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.post("/api/v1/auth/logout-all/").status_code == 204

    assert dashboard.get("/dashboard/").url.startswith("/dashboard/login/")
    assert admin.get("/admin/").url.startswith("/admin/login/")
    assert dashboard.get(ME).status_code == 401
    assert api.get(ME).status_code == 401  # and the tokens, as before
    assert bystander.get("/dashboard/").status_code == 200  # another user's session is untouched


def test_session_login_then_logout_all_leaves_no_session_row(api, staff):
    from django.contrib.sessions.models import Session

    assert session_login(Client(), DASHBOARD_LOGIN, "alice", ip="10.7.0.1").status_code == 302
    assert Session.objects.count() == 1
    token = login(api, "alice", ip="10.7.0.2").json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.post("/api/v1/auth/logout-all/").status_code == 204
    assert Session.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        "[" * 50_000 + "]" * 50_000,
        '{"username": ' + "[" * 50_000 + "]" * 50_000 + ', "password": "x"}',
        '{"username": "alice", "password": "x", "p": ' + '{"a": ' * 100 + "1" + "}" * 100 + "}",
    ],
    ids=["deep-array", "deep-username", "over-depth-limit"],
)
def test_deeply_nested_json_to_the_login_endpoint_is_400(db, body):
    client = APIClient(raise_request_exception=False)
    response = client.post("/api/v1/auth/login/", body, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper than" in response.json()["detail"]


def test_a_burst_of_concurrent_guesses_checks_at_most_the_allowed_number(transactional_db, settings):
    """Counted before the password is checked: parallel guesses cannot all pass a check-then-count race."""
    settings.SCHEDULER_LOGIN_MAX_FAILURES = 2
    threads_n = 6
    barrier = threading.Barrier(threads_n)
    outcomes: list[str] = []

    def guess(n: int) -> None:
        barrier.wait()
        try:
            services.login_attempt(request=None, username="nobody", password=f"guess-{n}")
            outcomes.append("checked")
        except services.LoginLocked:
            outcomes.append("locked")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["checked"] * 2 + ["locked"] * (threads_n - 2)


def test_a_lockout_refuses_new_logins_but_keeps_existing_sessions(api, staff):
    """Anyone can lock a username; signing its user out as well would let anyone do that to anybody."""
    browser = Client()
    assert session_login(browser, DASHBOARD_LOGIN, "alice", ip="10.8.0.1").status_code == 302
    for n in range(settings.SCHEDULER_LOGIN_MAX_FAILURES):
        assert login(api, "alice", "wrong", ip=f"10.8.1.{n + 1}").status_code == 401
    assert session_login(Client(), DASHBOARD_LOGIN, "alice", ip="10.8.2.1").status_code == 429
    assert browser.get("/dashboard/").status_code == 200
    assert browser.get(ME).status_code == 200


def test_a_deactivated_users_session_and_token_are_refused(api, staff):
    browser = Client()
    assert session_login(browser, ADMIN_LOGIN, "alice", ip="10.9.0.1").status_code == 302
    api.credentials(HTTP_AUTHORIZATION=f"Token {login(api, 'alice', ip='10.9.0.2').json()['token']}")
    type(staff).objects.filter(pk=staff.pk).update(is_active=False)
    assert browser.get("/admin/").url.startswith("/admin/login/")
    assert browser.get(ME).status_code == 401
    assert api.get(ME).status_code == 401


def test_the_login_endpoint_takes_json_only(db):
    response = APIClient().post(
        "/api/v1/auth/login/", {"username": "alice", "password": "x"}, format="multipart"
    )
    assert response.status_code == 415
