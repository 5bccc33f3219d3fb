"""The worker path through a real PgBouncer in transaction mode (SCHEDULER_DB_POOLER=pgbouncer).

A private pgbouncer (Debian's, installed when missing) in front of the test database, with fewer server
connections than clients, so that every transaction may land on another server session: a worker, a beat
and a gunicorn all reach PostgreSQL through it only, and shell jobs submitted through the API run to the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection
from knox.models import AuthToken

from jobs.models import Execution
from nodes.models import Node, ResourceAllocation
from tests.conftest import Proc, subprocess_env, wait_for
from tests.scaleout.servers import as_service_user, folder_remove, free_port, private_folder

pytestmark = pytest.mark.integration

PGBOUNCER = "/usr/sbin/pgbouncer"
NODE = "pgb1@testhost"
FAST = {
    "SCHEDULER_SWEEP_SECONDS": "1",
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "4",
    "SCHEDULER_NODE_MEMORY_MB": "4096",
    "SCHEDULER_DB_POOLER": "pgbouncer",
}
INI = """
[databases]
{dbname} = host={host} port={port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {root}/users.txt
pool_mode = transaction
; fewer server connections than clients, taken in turn: a client's consecutive transactions change sessions
default_pool_size = 2
server_round_robin = 1
max_client_conn = 200
server_reset_query =
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
"""


def packages_ensure() -> None:
    """Install Debian's pgbouncer when it is missing (`make pgbouncer` does the same before the suite)."""
    if os.path.exists(PGBOUNCER):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("the PgBouncer test needs Debian's pgbouncer (apt-get install pgbouncer as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


@dataclass
class Bouncer:
    root: Path
    port: int
    popen: subprocess.Popen[bytes]

    def url(self, dbname: str) -> str:
        return f"postgres://{connection.settings_dict['USER']}@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def pgbouncer(transactional_db) -> Iterator[Bouncer]:
    """A private pgbouncer in transaction mode in front of the test database; stopped by its pid."""
    packages_ensure()
    root = private_folder("scheduler-pgbouncer-")
    db = connection.settings_dict
    port = free_port()
    (root / "users.txt").write_text(f'"{db["USER"]}" ""\n')
    ini = root / "pgbouncer.ini"
    ini.write_text(
        INI.format(dbname=db["NAME"], host=db["HOST"], port=db["PORT"] or 5432, listen=port, root=root)
    )
    if os.geteuid() == 0:
        for path in (root / "users.txt", ini):
            shutil.chown(path, "postgres")
    # setpriv execs pgbouncer itself (it refuses to run as root): popen.pid is pgbouncer's pid.
    popen = subprocess.Popen(
        as_service_user([PGBOUNCER, "--quiet", str(ini)]),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bouncer = Bouncer(root, port, popen)
    try:
        wait_for(
            lambda: _answers(bouncer, db["NAME"]), 30, what=f"pgbouncer answering; log:\n{bouncer.log()}"
        )
        yield bouncer
    finally:
        popen.send_signal(signal.SIGTERM)  # immediate shutdown: its clients are stopped already
        try:
            popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)
        folder_remove(root)


def _answers(bouncer: Bouncer, dbname: str) -> bool:
    assert bouncer.popen.poll() is None, bouncer.log()
    import psycopg

    try:
        with psycopg.connect(bouncer.url(dbname), connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


@pytest.fixture
def web(pgbouncer: Bouncer, tmp_path: Path) -> Iterator[str]:
    """A real gunicorn whose database is the pgbouncer."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "scheduler_project.wsgi",
            "--config", "python:scheduler_project.gunicorn_conf", "--threads", "4"]  # fmt: skip
    env = subprocess_env(
        DATABASE_URL=pgbouncer.url(connection.settings_dict["NAME"]),
        SCHEDULER_DB_POOLER="pgbouncer",
        SCHEDULER_WEB_PORT=str(port),
        SCHEDULER_WEB_WORKERS="1",
    )
    proc = Proc(argv, env, tmp_path / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.alive(), proc.log()
        try:
            return requests.get(f"{base}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(up, 60, what="gunicorn answering /healthz")
        yield base
    finally:
        proc.stop()


def _api(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return session


def test_jobs_run_end_to_end_through_pgbouncer(pgbouncer, start_worker, start_beat, web, make_user) -> None:
    through = {"DATABASE_URL": pgbouncer.url(connection.settings_dict["NAME"]), **FAST}
    worker = start_worker(name=NODE, concurrency=2, queues="default", **through)
    beat = start_beat(**through)  # the project's scheduler: its full sync reads with .iterator()
    api = _api(AuthToken.objects.create(make_user("bounced", "submitter", run_shell=True))[1])

    def online() -> bool:
        assert worker.alive(), worker.log()[-3000:]
        return Node.objects.filter(name=NODE, status=Node.Status.ONLINE).exists()

    wait_for(online, 90, what="the worker's node online")

    executions = []
    for n in range(4):
        job = api.post(f"{web}/api/v1/jobs/", json=_shell_job(f"pgb-{n}"), timeout=30)
        assert job.status_code == 201, job.text
        run = api.post(f"{web}/api/v1/jobs/{job.json()['id']}/run/", timeout=30)
        assert run.status_code == 201, run.text
        executions.append(run.json()["id"])
    ticking = api.post(
        f"{web}/api/v1/jobs/",
        json={**_shell_job("pgb-tick"), "schedule": {"type": "interval", "every_seconds": 1}},
        timeout=30,
    )
    assert ticking.status_code == 201, ticking.text

    def finished() -> bool:
        statuses = [
            api.get(f"{web}/api/v1/executions/{pk}/", timeout=30).json()["status"] for pk in executions
        ]
        ticks = Execution.objects.filter(job_id=ticking.json()["id"], status=Execution.Status.SUCCEEDED)
        return all(s not in ("pending", "queued", "running") for s in statuses) and ticks.count() >= 2

    wait_for(finished, 90, what=f"the runs to finish\n{_logs(worker, beat)}", interval=0.5)
    for n, pk in enumerate(executions):
        body = api.get(f"{web}/api/v1/executions/{pk}/", timeout=30).json()
        assert body["status"] == "succeeded", (body, _logs(worker, beat))
        assert body["exit_code"] == 0
        assert f"hello pgb-{n}" in body["output"]
    api.post(f"{web}/api/v1/jobs/{ticking.json()['id']}/pause/", timeout=30)

    log = api.get(f"{web}/api/v1/executions/{executions[0]}/log/", timeout=30)
    assert log.status_code == 200
    assert "hello pgb-0" in log.json()["text"]
    nodes = api.get(f"{web}/api/v1/nodes/", timeout=30)
    assert nodes.status_code == 200
    assert NODE in [n["name"] for n in nodes.json()["results"]]
    # Nothing stays running or reserved once the runs are over.
    wait_for(lambda: not Execution.objects.filter(status__in=Execution.ACTIVE).exists(), 30, what="no active")
    assert not ResourceAllocation.objects.filter(released_at__isnull=True).exists()
    node = Node.objects.get(name=NODE)
    assert node.cpu_allocated == 0
    assert node.memory_mb_allocated == 0
    for proc in (worker, beat):
        assert "prepared statement" not in proc.log()
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
    # Every process reached PostgreSQL through the pooler.
    assert pgbouncer.log().count("login attempt") >= 3


def _logs(*procs: Proc) -> str:
    return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in procs)


def _shell_job(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "shell", "payload": {"command": ["echo", f"hello {name}"]}}


def _settings_with(**env: str) -> dict[str, Any]:
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps("
        "{'cursors': [d['DISABLE_SERVER_SIDE_CURSORS'] for d in s.DATABASES.values()],"
        " 'prepare': s.SCHEDULER_DB_PREPARE}))"
    )
    env = subprocess_env(DJANGO_SETTINGS_MODULE="scheduler_project.settings", **env)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pooler_setting_turns_off_what_needs_a_session() -> None:
    assert _settings_with() == {"cursors": [False], "prepare": True}
    assert _settings_with(SCHEDULER_DB_POOLER="pgbouncer") == {"cursors": [True], "prepare": False}
    # PgBouncer 1.21+ with max_prepared_statements keeps prepared statements: the operator says so.
    both = _settings_with(SCHEDULER_DB_POOLER="pgbouncer", SCHEDULER_DB_PREPARE="1")
    assert both == {"cursors": [True], "prepare": True}
