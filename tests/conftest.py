"""Shared fixtures: real PostgreSQL (pytest-django's test database), real Redis, real celery processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config: pytest.Config) -> list[str]:
    db = settings.DATABASES["default"]
    version = "unknown"
    try:
        import psycopg

        with psycopg.connect(
            host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", connect_timeout=3
        ) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    except Exception as exc:  # noqa: BLE001 - only a report header
        version = f"unreachable: {exc}"
    cache = redis.Redis.from_url(settings.REDIS_URL)
    broker = (
        f"RabbitMQ at {settings.CELERY_BROKER_URL.rsplit('@', 1)[-1]}"
        if settings.BROKER_IS_AMQP
        else f"Redis {cache.info()['redis_version']} at {settings.CELERY_BROKER_URL}"
    )
    return [
        f"database: PostgreSQL {version} at {db['HOST']}:{db['PORT']} (tests use test_{db['NAME']})",
        f"broker: {broker}; Redis (cache, locks) at {settings.REDIS_URL}",
    ]


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis() -> Iterator[None]:
    """The test Redis database number is ours alone: empty before the run and after it."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture
def make_user(db) -> Callable[..., Any]:
    """make_user("olga", "operator", run_shell=True): a user in the given role groups, fetched fresh."""
    from django.contrib.auth.models import Group, Permission

    from accounts.services import roles_sync
    from tests.factories import UserFactory

    def make(username: str, *roles: str, run_shell: bool = False, **fields: Any) -> Any:
        if roles and not Group.objects.filter(name__in=roles).exists():
            roles_sync()  # transactional tests flush the groups the migration created
        user: Any = UserFactory(username=username, **fields)
        user.groups.add(*Group.objects.filter(name__in=roles))
        if run_shell:
            user.user_permissions.add(
                Permission.objects.get(codename="run_shell", content_type__app_label="jobs")
            )
        return type(user).objects.get(pk=user.pk)  # fresh: no stale permission cache

    return make


@pytest.fixture
def in_test_transaction(db) -> Iterator[None]:
    """Let the project's WSGI application run inside the test's transaction (as Django's test client does)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def redis_client() -> redis.Redis:
    """The test Redis database (the broker too, unless the run is on RabbitMQ: tests.broker_matrix)."""
    return redis.Redis.from_url(settings.REDIS_URL)


def test_database_url() -> str:
    """DATABASE_URL of the test database, for subprocesses (workers, beat) started by a test."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/scheduler"
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{connection.settings_dict['NAME']}"))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        SCHEDULER_ENVIRONMENT="test",
        SCHEDULER_READ_VAR_ENV="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Proc:
    """A real child process (celery worker or beat) with its log file; killed on cleanup."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the process and every child it forked (a pool's processes included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        if self.alive() or self.popen.returncode is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._log.close()


def wait_for(
    predicate: Callable[[], object], timeout: float = 60, interval: float = 0.2, what: str = ""
) -> object:
    """Poll until predicate() is truthy; fail the test with `what` after a generous timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture
def start_worker(transactional_db, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real `celery worker` processes against the test database and test Redis."""
    procs: list[Proc] = []

    def start(name: str = "w1@testhost", concurrency: int = 2, queues: str | None = None, **env: str) -> Proc:
        argv = [
            sys.executable, "-m", "celery", "-A", "scheduler_project", "worker",
            "-n", name, "-c", str(concurrency), "--loglevel", "INFO", "-E", "--without-mingle",
            "--without-gossip",
        ]  # fmt: skip
        if queues:
            argv += ["-Q", queues]
        proc = Proc(argv, subprocess_env(**env), tmp_path / f"worker-{name.replace('@', '_')}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def start_beat(transactional_db, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real `celery beat` processes against the test database and test Redis."""
    procs: list[Proc] = []

    def start(label: str = "beat1", scheduler: str | None = None, **env: str) -> Proc:
        argv = [
            sys.executable, "-m", "celery", "-A", "scheduler_project", "beat", "--loglevel", "INFO",
            "-s", str(tmp_path / f"{label}-schedule"), "--pidfile", "",
        ]  # fmt: skip
        if scheduler:
            argv += ["-S", scheduler]
        proc = Proc(argv, subprocess_env(**env), tmp_path / f"{label}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def database_connect(dbname: str | None = None) -> psycopg.Connection[Any]:
    """A psycopg connection of the test's own (autocommit) to the test database or `dbname`: never one of
    the connections a fault test terminates."""
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=dbname or db["NAME"],
        autocommit=True,
        connect_timeout=10,
    )


def processes_with(marker: str) -> list[psutil.Process]:
    """The live processes whose argv holds `marker` (a test job's own processes)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in (proc.info["cmdline"] or []):
                found.append(proc)
    return found


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private Docker Engine (its own dockerd, data root and socket) with the busybox test image."""
    from tests.docker_engine import engine_start, engine_stop

    engine = engine_start(tmp_path_factory.mktemp("docker"))
    yield engine
    engine_stop(engine)


@pytest.fixture
def docker_host(docker_engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """DOCKER_HOST of the private engine, in this process's environment for the test."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    return docker_engine


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On RabbitMQ (tests.broker_matrix) tests that read the Redis broker's own lists are skipped."""
    if settings.BROKER_IS_AMQP:
        skip = pytest.mark.skip(reason="reads the Redis broker's lists; this run is on RabbitMQ")
        for item in items:
            if item.get_closest_marker("redis_only"):
                item.add_marker(skip)


def broker_queue_length(name: str) -> int:
    """Messages waiting in a broker queue (Redis: every priority list; RabbitMQ: ready messages)."""
    if settings.BROKER_IS_AMQP:
        from jobs.broker import broker_ready_counts

        return broker_ready_counts(queue_names=[name])[name]
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return sum(int(client.llen(f"{name}:{n}" if n else name)) for n in range(10))  # type: ignore[arg-type]


def broker_drain(name: str) -> list[dict[str, Any]]:
    """Take every message waiting in a broker queue (Redis or RabbitMQ): [{"headers": ..., "body": ...}]."""
    from celery import current_app

    found: list[dict[str, Any]] = []
    with current_app.connection_for_read() as conn:
        queue = current_app.amqp.queues[name](conn.default_channel)
        queue.declare()  # as the app declares it (a publisher or worker may not have yet)
        while (message := queue.get(no_ack=True)) is not None:
            found.append({"headers": dict(message.headers or {}), "body": message.payload})
    return found
