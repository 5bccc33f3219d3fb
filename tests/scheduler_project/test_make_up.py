"""`make up` for real: embedded PostgreSQL and Redis, migrate, admin, then web, beat, worker and Flower.

Runs the real Makefile target in a throwaway var dir on free ports (with .venv already present), checks
every process answers, SIGKILLs the worker and sees supervisord start a new one while the others keep
running, stops it with a signal the way Ctrl-C does, then runs it again on the same data.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
import requests
from django.conf import settings

from tests.conftest import ROOT, database_connect, processes_with, wait_for

pytestmark = pytest.mark.integration

# Variables of the test run that must not leak into `make up` (it would run in test mode on the test DB).
_DROP = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "SCHEDULER_ENVIRONMENT",
    "SCHEDULER_TEST_REDIS_DB",
    "SECRET_KEY",
    "FLOWER_BASIC_AUTH",
    "SCHEDULER_READ_VAR_ENV",
    "DJANGO_SETTINGS_MODULE",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Up:
    var: Path
    ports: dict[str, int]
    runs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)  # e.g. servers and secrets a user configured

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith("PYTEST_")}
        env.update(
            SCHEDULER_VAR_DIR=str(self.var),
            SCHEDULER_EMBEDDED_PG_PORT=str(self.ports["pg"]),
            SCHEDULER_EMBEDDED_REDIS_PORT=str(self.ports["redis"]),
            SCHEDULER_WEB_PORT=str(self.ports["web"]),
            SCHEDULER_FLOWER_PORT=str(self.ports["flower"]),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra)
        return env

    def start(self) -> subprocess.Popen:
        log = self.var.parent / f"make-up-{len(self.runs) + 1}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["make", "--no-print-directory", "up"],
                cwd=ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.runs.append((proc, log))
        return proc

    def log(self) -> str:
        return self.runs[-1][1].read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['web']}{path}"

    def var_env(self) -> dict[str, str]:
        lines = (self.var / "env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    def stop_servers(self) -> None:
        subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-m", "scheduler_project.devservers", "stop"],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def up() -> Iterator[Up]:
    # Directly under /tmp: the embedded PostgreSQL runs as another user and must traverse every parent.
    var = Path(tempfile.mkdtemp(prefix="sched-up-")) / "var"
    ports = {"pg": free_port(), "redis": free_port(), "web": free_port(), "flower": free_port()}
    state = Up(var=var, ports=ports)
    yield state
    for proc, _ in state.runs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    state.stop_servers()
    shutil.rmtree(var.parent, ignore_errors=True)


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def get(url: str, **kwargs) -> requests.Response | None:
    try:
        return requests.get(url, timeout=5, **kwargs)
    except requests.RequestException:
        return None


def status(url: str, **kwargs) -> int | None:
    response = get(url, **kwargs)
    return response.status_code if response is not None else None


def healthy(up: Up) -> bool:
    response = get(up.url("/healthz"))
    if response is None or response.status_code != 200:
        return False
    checks = response.json()["checks"]
    return checks["database"]["ok"] and checks["broker"]["ok"]


def worker_answers_ping(up: Up) -> bool:
    env = {**up.env(), **up.var_env()}
    result = subprocess.run(
        [str(ROOT / ".venv/bin/celery"), "-A", "scheduler_project", "inspect", "ping", "--timeout", "3",
         "-d", f"worker1@{socket.gethostname()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode == 0 and "pong" in result.stdout


def supervised_pid(up: Up, name: str) -> int | None:
    """The pid supervisord reports for program `name` (None while it is not running)."""
    result = subprocess.run(
        [str(ROOT / ".venv/bin/supervisorctl"), "-c", str(up.var / "supervisord.conf"), "pid", name],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    pid = result.stdout.strip()
    return int(pid) if pid.isdigit() and int(pid) > 0 else None


def process_tree(proc: subprocess.Popen) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    return []


def alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


# A shell job whose first attempt would run for minutes; the flag lives in /tmp, writable by the user the
# job runs as (`nobody` when the worker is root), and the marker is in the shell's argv.
RUN_ONCE_LONG = 'if [ -e "$1" ]; then echo second attempt; else : > "$1"; sleep 300; fi'


class ApiClient:
    """The REST API of a running `make up`, logged in with a token."""

    def __init__(self, up: Up, username: str, password: str) -> None:
        self.up = up
        login = requests.post(
            up.url("/api/v1/auth/login/"), json={"username": username, "password": password}, timeout=10
        )
        assert login.status_code == 200, login.text
        self.headers = {"Authorization": f"Token {login.json()['token']}"}

    def post(self, path: str, body: dict) -> dict:
        response = requests.post(self.up.url(path), json=body, headers=self.headers, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def statuses(self, job_id: int) -> list[str]:
        url = self.up.url(f"/api/v1/executions/?job={job_id}&ordering=id")
        response = requests.get(url, headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        return [e["status"] for e in body.get("results", body)]


def test_make_up_runs_everything_stops_cleanly_and_reuses_its_data(up):
    make = up.start()
    wait_for(
        lambda: status(up.url("/admin/login/")) == 200 or make.poll() is not None, 150, what="admin page"
    )
    assert make.poll() is None, up.log()
    wait_for(lambda: healthy(up), 60, what="/healthz with database and broker ok")
    assert "embedded server under" in up.log()

    # The embedded servers require the passwords generated under var/ (mode 600).
    pg_password = (up.var / "postgres-password").read_text().strip()
    redis_password = (up.var / "redis-password").read_text().strip()
    assert oct((up.var / "postgres-password").stat().st_mode & 0o777) == "0o600"
    pg = {"host": "127.0.0.1", "port": up.ports["pg"], "user": "postgres", "dbname": "scheduler"}
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(**pg, connect_timeout=5)
    psycopg.connect(**pg, password=pg_password, connect_timeout=5).close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=up.ports["redis"], socket_timeout=5).ping()
    assert redis.Redis(port=up.ports["redis"], password=redis_password, socket_timeout=5).ping()

    admin_user, admin_password = (up.var / "admin-password").read_text().split()
    assert f"with password: {admin_password}" in up.log()  # printed once, on creation
    flower_password = (up.var / "flower-password").read_text().strip()
    assert flower_password in up.log()

    wait_for(lambda: worker_answers_ping(up), 90, what="celery inspect ping answered by worker1")
    tree = process_tree(make)
    beat = [p for p in tree if alive(p) and " beat" in " ".join(p.cmdline())]
    assert beat, [p.cmdline() for p in tree]
    wait_for(lambda: "beat: Starting..." in up.log(), 60, what="beat logging")

    flower = f"http://127.0.0.1:{up.ports['flower']}/"
    wait_for(lambda: status(flower) == 401, 60, what="Flower refusing a request without credentials")
    assert status(flower, auth=("admin", flower_password)) == 200
    assert status(flower, auth=("admin", "wrong")) == 401

    # Every line of output names its process.
    assert re.search(r"^web +\| .*Listening at", up.log(), re.MULTILINE), up.log()
    assert re.search(r"^worker +\| .*ready\.", up.log(), re.MULTILINE), up.log()

    # A run in flight when the worker dies: a shell job whose first attempt would run for minutes.
    api, run_marker = ApiClient(up, admin_user, admin_password), f"make-up-run-{os.getpid()}"
    flag = up.var.parent / "ran-once"
    up.var.parent.chmod(0o1777)  # the job's user writes its flag there
    job = api.post("/api/v1/jobs/", {
        "name": "in flight", "kind": "shell", "max_retries": 1, "retry_backoff_seconds": 1,
        "retry_jitter": False,
        "payload": {"command": ["sh", "-c", RUN_ONCE_LONG, "sh", str(flag), run_marker]},
    })  # fmt: skip
    api.post(f"/api/v1/jobs/{job['id']}/run/", {})
    wait_for(lambda: api.statuses(job["id"]) == ["running"] and processes_with(run_marker), 90,
             what="the run in flight")  # fmt: skip

    # SIGKILL the worker: supervisord starts a new one, which answers again; the others keep running.
    pids = {name: supervised_pid(up, name) for name in ("web", "beat", "worker", "flower")}
    assert all(pids.values()), pids
    worker = psutil.Process(pids["worker"])
    assert worker in process_tree(make)  # only ever kill a process this test started
    pool = worker.children(recursive=True)
    worker.kill()
    wait_for(
        lambda: supervised_pid(up, "worker") not in (None, pids["worker"]), 60, what="a new worker process"
    )
    assert "exited: worker (terminated by SIGKILL; not expected)" in up.log()
    wait_for(lambda: worker_answers_ping(up), 90, what="celery inspect ping answered by the new worker")
    assert healthy(up)
    assert {name: supervised_pid(up, name) for name in ("web", "beat", "flower")} == {
        name: pids[name] for name in ("web", "beat", "flower")
    }
    assert make.poll() is None
    # The killed worker's pool processes do not outlive it.
    wait_for(lambda: not any(alive(p) for p in pool), 30, what="the killed worker's pool processes to exit")
    # The new worker (same name, new incarnation) took over the run: lost at once (its job, which outlived
    # the pool in its own session, killed first), then retried: one success, and nothing left running.
    wait_for(lambda: api.statuses(job["id"]) == ["lost", "succeeded"], 90,
             what=f"the run in flight recovered and retried: {api.statuses(job['id'])}")  # fmt: skip
    assert not processes_with(run_marker)

    # Ctrl-C: the terminal signals the whole foreground group; supervisord stops every program in order.
    os.killpg(make.pid, signal.SIGINT)
    make.wait(timeout=60)
    wait_for(lambda: not any(alive(p) for p in tree), 30, what="every process of make up to exit")
    assert status(up.url("/healthz")) is None
    assert "Warm shutdown" in up.log()  # the worker was asked to stop, not killed
    assert "stopped: worker (exit status 0)" in up.log()
    # Ctrl-C stops what make up started, the embedded servers too: nothing is left holding a port.
    for server in ("pg", "redis"):
        port = up.ports[server]
        wait_for(lambda port=port: not port_answers(port), 30, what=f"the embedded {server} to stop")

    # Again, on the same data: no new admin, the old password still logs in.
    make = up.start()
    wait_for(lambda: healthy(up) or make.poll() is not None, 150, what="second make up")
    assert make.poll() is None, up.log()
    assert "An admin user exists" in up.log()
    assert admin_password not in up.log()
    login = requests.post(
        up.url("/api/v1/auth/login/"), json={"username": admin_user, "password": admin_password}, timeout=10
    )
    assert login.status_code == 200, login.text
    assert "admin" in login.json()["user"]["roles"]
    tree = process_tree(make)
    os.killpg(make.pid, signal.SIGTERM)
    make.wait(timeout=60)
    wait_for(lambda: not any(alive(p) for p in tree), 30, what="every process of the second make up to exit")

    up.stop_servers()
    assert status(up.url("/healthz")) is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", up.ports["redis"]), timeout=2)


def test_make_up_with_its_servers_and_secrets_configured_uses_them_and_leaves_nothing_running(up):
    """A fresh var/ with DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY and FLOWER_BASIC_AUTH set: no embedded
    server, nothing generated but var/env, and Ctrl-C stops every process make up started."""
    name = f"makeup_configured_{os.getpid()}"
    db = settings.DATABASES["default"]
    redis_db = settings.CELERY_BROKER_URL.rsplit("/", 1)[1] or "0"
    redis_db = str((int(redis_db) + 15) % 16)  # next to the test run's own number, flushed after
    broker = f"redis://127.0.0.1:6379/{redis_db}"
    with database_connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        up.extra = {
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}",
            "CELERY_BROKER_URL": broker,
            "SECRET_KEY": "a-secret-key-the-operator-chose-" + "x" * 30,
            "FLOWER_BASIC_AUTH": "admin:a-strong-flower-password-1",
        }
        make = up.start()
        wait_for(lambda: healthy(up) or make.poll() is not None, 150, what="make up on configured servers")
        assert make.poll() is None, up.log()
        assert "embedded server under" not in up.log()
        assert not (up.var / "postgres").exists()
        assert not (up.var / "secret-key").exists()  # the configured one is used
        assert (up.var / "env").exists()
        tree = process_tree(make)
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)
        wait_for(lambda: not any(alive(p) for p in tree), 30, what="every process of make up to exit")
    finally:
        with database_connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(broker).flushdb()
