"""The database going away answers 503 + Retry-After (never a 500); safe reads are retried once.

Connections are terminated for real (pg_terminate_backend) on the test database only: through a real
gunicorn under load, and, in the focused tests, the test process's own backend at a chosen statement.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import DatabaseError, connection
from django.test import Client
from knox.models import AuthToken

from jobs.models import Job
from tests.api.conftest import job_body, token_client
from tests.conftest import Proc, database_connect, subprocess_env, wait_for
from tests.factories import JobFactory

Killer = Callable[[int], None]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def kill_backend(transactional_db) -> Iterator[Killer]:
    """kill_backend(pid): terminate that backend of the test database; wait (5 s at most) until it is gone."""
    with database_connect() as admin:

        def kill(pid: int) -> None:
            row = admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE pid = %s AND datname = current_database()",
                [pid],
            ).fetchone()
            assert row is not None
            assert row[0] is True, f"backend {pid} was not terminated"

        yield kill
    # A test that failed may leave this process's connection dead: the database flush after it needs one.
    with contextlib.suppress(DatabaseError):
        connection.close()


def _backend_pid() -> int:
    connection.ensure_connection()
    return int(connection.connection.info.backend_pid)


@contextlib.contextmanager
def kill_at(kill: Killer, when: Callable[[str], bool]) -> Iterator[list[str]]:
    """Terminate this process's backend just before each statement `when(sql)` picks; yields those."""
    killed: list[str] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict) -> Any:
        if when(sql):
            killed.append(sql)
            kill(int(context["connection"].connection.info.backend_pid))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield killed


def _assert_503(response: Any, retry_after: str = "2", json: bool = True) -> None:
    assert response.status_code == 503, response.content[:2000]
    assert response["Retry-After"] == retry_after
    if json:
        assert response["Content-Type"] == "application/json"
        assert "database" in response.json()["detail"]
    else:
        assert response["Content-Type"].startswith("text/html")
        assert b"Service unavailable" in response.content


# --- Reads: retried once on a fresh connection ---------------------------------------------------


def test_a_read_cut_off_is_retried_once_on_a_fresh_connection(kill_backend, make_user):
    alice = make_user("alice", "submitter")
    job = JobFactory(owner=alice, name="still-there")
    client = token_client(alice)
    before = _backend_pid()
    kill_backend(before)  # the connection the request is about to use is dead: its first query fails
    response = client.get("/api/v1/jobs/")
    assert response.status_code == 200, response.content
    assert [row["id"] for row in response.json()["results"]] == [job.pk]
    assert _backend_pid() != before


def test_an_admin_page_read_is_retried_too(kill_backend, make_user):
    client = Client()
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    kill_backend(_backend_pid())
    response = client.get("/admin/")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "json"), [("/api/v1/jobs/", True), ("/dashboard/", False), ("/admin/", False)]
)
def test_a_read_failing_twice_is_503_and_not_retried_again(kill_backend, make_user, path, json):
    user = make_user("olga", "operator", is_staff=True, is_superuser=True)
    client = token_client(user)
    client.force_login(user)
    with kill_at(kill_backend, lambda sql: True) as killed:
        response = client.get(path)
    _assert_503(response, json=json)
    assert len(killed) == 2  # the first attempt and the one retry, each dying at its first statement


# --- Writes: never repeated by the server; the Idempotency-Key makes the client's retry safe --------


def _insert_job(sql: str) -> bool:
    return sql.startswith('INSERT INTO "jobs_job"')


def _after_commit(seen_insert: list[bool]) -> Callable[[str], bool]:
    """The first read of jobs_job after the create's transaction committed (the view's re-read)."""

    def when(sql: str) -> bool:
        if _insert_job(sql):
            seen_insert.append(True)
            return False
        return bool(seen_insert) and not connection.in_atomic_block and 'FROM "jobs_job"' in sql

    return when


@pytest.mark.parametrize("cut", ["before_commit", "after_commit"])
def test_a_create_cut_off_is_503_and_its_key_gives_exactly_one_job(kill_backend, make_user, settings, cut):
    settings.SCHEDULER_DB_RETRY_AFTER_SECONDS = 7
    client = token_client(make_user("alice", "submitter"))
    when = _insert_job if cut == "before_commit" else _after_commit([])
    with kill_at(kill_backend, when) as killed:
        response = client.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="cut-1")
    _assert_503(response, retry_after="7")
    assert len(killed) == 1  # a write is not repeated server-side
    committed = Job.objects.filter(idempotency_key="cut-1")
    assert committed.count() == (0 if cut == "before_commit" else 1)  # all of it or nothing

    again = client.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="cut-1")
    assert again.status_code == (201 if cut == "before_commit" else 200), again.content
    assert committed.count() == 1
    assert again.json()["id"] == committed.get().pk


# --- Errors raised in a middleware; errors that are not about availability ------------------------


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(("path", "json"), [("/api/v1/jobs/", True), ("/dashboard/", False)])
def test_a_database_error_in_a_middleware_is_503(kill_backend, make_user, settings, debug, path, json):
    """The session is saved in SessionMiddleware.process_response, after the view answered."""
    settings.SESSION_SAVE_EVERY_REQUEST = True
    settings.DEBUG = debug  # DEBUG's technical 500 page must not hide it either
    client = Client(raise_request_exception=False)  # a WSGI server answers; it does not re-raise
    client.force_login(make_user("olga", "operator"))
    with kill_at(kill_backend, lambda sql: sql.startswith('UPDATE "django_session"')) as killed:
        response = client.get(path)
    assert len(killed) == 1
    _assert_503(response, json=json)
    assert client.get(path).status_code == 200  # the next request has a fresh connection


def test_a_statement_error_is_still_a_500_and_not_retried(make_user, transactional_db):
    client = token_client(make_user("alice", "submitter"))
    client.raise_request_exception = False
    broken: list[str] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict) -> Any:
        if 'FROM "jobs_job"' in sql:
            broken.append(sql)
            return execute("SELECT * FROM no_such_table", None, False, context)  # a real ProgrammingError
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        response = client.get("/api/v1/jobs/")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error."}
    assert "Retry-After" not in response
    assert len(broken) == 1


# --- Under load: a real gunicorn while every connection is terminated three times ----------------


@dataclass
class Call:
    op: str
    started: float
    ended: float
    status: int | None
    retry_after: str | None = None
    content_type: str = ""
    body: Any = None
    error: str = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def web(transactional_db, tmp_path: Path) -> Iterator[str]:
    """A real gunicorn (2 processes x 4 threads, as in production but threaded) on the test database."""
    port = _free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "scheduler_project.wsgi",
        "--config", "python:scheduler_project.gunicorn_conf", "--threads", "4",
    ]  # fmt: skip
    env = subprocess_env(
        SCHEDULER_WEB_PORT=str(port), SCHEDULER_WEB_WORKERS="2", SCHEDULER_DB_RETRY_AFTER_SECONDS="1"
    )
    proc = Proc(argv, env, tmp_path / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert proc.alive(), proc.log()
        return False

    try:
        wait_for(up, 90, what="gunicorn answering /healthz")
        yield base
    finally:
        proc.stop()


def _call(session: requests.Session, op: str, method: str, url: str, **kwargs: Any) -> Call:
    started = time.monotonic()
    try:
        response = session.request(method, url, timeout=60, **kwargs)
    except requests.RequestException as exc:
        return Call(op, started, time.monotonic(), None, error=repr(exc))
    body: Any = response.text[:500]
    with contextlib.suppress(ValueError):
        body = response.json()
    return Call(
        op, started, time.monotonic(), response.status_code,
        response.headers.get("Retry-After"), response.headers.get("Content-Type", ""), body,
    )  # fmt: skip


def _client_loop(
    base: str, token: str, job_id: int, stop: threading.Event, calls: list[Call], keys: dict
) -> None:
    """GET list, GET detail, POST create in turn; a create answered 503 is repeated with its key."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    while not stop.is_set():
        calls.append(_call(session, "list", "GET", f"{base}/api/v1/jobs/?limit=5"))
        calls.append(_call(session, "detail", "GET", f"{base}/api/v1/jobs/{job_id}/"))
        key = uuid.uuid4().hex
        for _attempt in range(30):
            call = _call(
                session, "create", "POST", f"{base}/api/v1/jobs/",
                json=job_body(name=f"load-{key[:8]}"), headers={"Idempotency-Key": key},
            )  # fmt: skip
            calls.append(call)
            if call.status != 503:
                break
            time.sleep(float(call.retry_after or 1))  # as docs/api.md advises
        keys[key] = call


def _kill_every_connection(kills: list[tuple[float, float, int]], times: int = 3, apart: float = 2.0) -> None:
    """pg_terminate_backend on every other connection of the test database, `times` times `apart` s apart."""
    with database_connect() as admin:
        for index in range(times):
            if index:
                time.sleep(apart)
            started = time.monotonic()
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
            kills.append((started, time.monotonic(), sum(1 for (done,) in rows if done)))


@pytest.mark.parametrize("round_", [1, 2, 3])  # each scenario three times in a row
def test_api_under_connection_kills_answers_only_200_201_503(round_, web, make_user):
    alice = make_user("alice", "submitter")
    _, token = AuthToken.objects.create(alice)
    job = JobFactory(owner=alice, name="read-me")
    calls: list[Call] = []
    keys: dict[str, Call] = {}
    kills: list[tuple[float, float, int]] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=_client_loop, args=(web, token, job.pk, stop, calls, keys), daemon=True)
        for _ in range(8)
    ]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: sum(c.status == 201 for c in calls) >= 8, 60, what="the load to get going")
        _kill_every_connection(kills)
        settled = len(calls)
        wait_for(lambda: len(calls) >= settled + 40, 60, what="requests after the last kill")
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    with contextlib.suppress(DatabaseError):
        connection.close()  # this process's own connection was terminated as well

    assert not any(thread.is_alive() for thread in clients)
    bad = [c for c in calls if c.status not in (200, 201, 503)]
    assert bad == [], f"{len(bad)} of {len(calls)} requests answered otherwise: {bad[:5]}"
    for started, ended, terminated in kills:
        assert terminated >= 1  # gunicorn's threads hold connections (CONN_MAX_AGE)
        assert any(c.started <= ended and c.ended >= started for c in calls), "no request during a kill"
    unavailable = [c for c in calls if c.status == 503]
    for call in unavailable:
        assert call.retry_after == "1", call
        assert call.content_type == "application/json", call
        assert isinstance(call.body, dict), call
        assert "detail" in call.body, call
    # Every create ended in a job; a retried one (503 first) still made exactly one.
    assert keys
    assert all(call.status in (200, 201) for call in keys.values())
    jobs = {key: list(Job.objects.filter(idempotency_key=key)) for key in keys}
    assert {key: len(found) for key, found in jobs.items() if len(found) != 1} == {}
    assert all(jobs[key][0].pk == call.body["id"] for key, call in keys.items())
    print(f"answers by (request, status): {Counter((c.op, c.status) for c in calls)}; kills: {kills}")
