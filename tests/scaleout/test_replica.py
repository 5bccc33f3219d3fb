"""A read replica for real: a private primary and its streaming standby, and a gunicorn reading from both.

The servers log every statement with the connection's application name (the web process's is
"scheduler-web", via PGAPPNAME), so each test reads in the two logs where the app's statements ran.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.conftest import Proc, subprocess_env, wait_for
from tests.scaleout.servers import (
    Postgres,
    folder_remove,
    free_port,
    primary_start,
    private_folder,
    standby_start,
    wait_replayed,
)

pytestmark = pytest.mark.integration

APP = "scheduler-web"
DBNAME = "scheduler_replica"
MAX_LAG = 2
CHECK_SECONDS = 2
METRICS_TOKEN = "replica-test-metrics-token"  # noqa: S105 - a private test server's
SETUP = """
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth import get_user_model
from knox.models import AuthToken
call_command("migrate", verbosity=0)
user = get_user_model().objects.create_superuser("replica-op", "op@example.com", "not-used-0123")
print(AuthToken.objects.create(user)[1])
"""


@dataclass
class Cluster:
    primary: Postgres
    replica: Postgres
    base: str
    web: Proc
    session: requests.Session

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(f"{self.base}{path}", timeout=30, **kwargs)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.session.post(f"{self.base}{path}", json=body, timeout=30)

    def mark(self) -> None:
        self.primary.log.mark()
        self.replica.log.mark()

    def where(self, table: str) -> set[str]:
        """Which servers ran the app's statements on `table` since the mark."""
        found = set()
        for name, server in (("primary", self.primary), ("replica", self.replica)):
            if any(f'"{table}"' in sql for sql in server.app_statements(APP)):
                found.add(name)
        return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = private_folder("scheduler-replica-")
    servers: list[Postgres] = []
    procs: list[Proc] = []
    try:
        primary = primary_start(root)
        servers.append(primary)
        with primary.connect() as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
        env = subprocess_env(
            DATABASE_URL=primary.url(DBNAME), DJANGO_SETTINGS_MODULE="scheduler_project.settings"
        )
        done = subprocess.run(
            [sys.executable, "-c", SETUP], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        replica = standby_start(root, primary)
        servers.append(replica)
        wait_replayed(primary, replica)

        port = free_port()
        web_env = subprocess_env(
            DATABASE_URL=primary.url(DBNAME),
            DATABASE_REPLICA_URL=replica.url(DBNAME),
            SCHEDULER_REPLICA_MAX_LAG_SECONDS=str(MAX_LAG),
            SCHEDULER_REPLICA_CHECK_SECONDS=str(CHECK_SECONDS),
            SCHEDULER_METRICS_TOKEN=METRICS_TOKEN,
            SCHEDULER_METRICS_CACHE_SECONDS="0",
            SCHEDULER_WEB_PORT=str(port),
            SCHEDULER_WEB_WORKERS="1",
            PGAPPNAME=APP,
        )
        argv = [sys.executable, "-m", "gunicorn", "scheduler_project.wsgi",
                "--config", "python:scheduler_project.gunicorn_conf", "--threads", "2"]  # fmt: skip
        web = Proc(argv, web_env, tmp_path_factory.mktemp("replica-web") / "gunicorn.log")
        procs.append(web)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert web.alive(), web.log()
            try:
                return requests.get(f"{base}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 60, what="gunicorn answering /healthz")
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        yield Cluster(primary, replica, base, web, session)
    finally:
        for proc in procs:
            proc.stop()
        for server in reversed(servers):
            server.stop("immediate")
        folder_remove(root)


@pytest.fixture(scope="module")
def objects(cluster: Cluster) -> dict[str, int]:
    """A node, a job and an execution of it, written through the API, replayed on the standby."""
    node = cluster.post(
        "/api/v1/nodes/", {"name": "rn1@replica-test", "cpu_capacity": 4, "memory_mb_capacity": 4096}
    )
    assert node.status_code == 201, node.text
    job = cluster.post(
        "/api/v1/jobs/", {"name": "echo", "kind": "python", "payload": {"handler": "echo", "kwargs": {}}}
    )
    assert job.status_code == 201, job.text
    run = cluster.post(f"/api/v1/jobs/{job.json()['id']}/run/")
    assert run.status_code in (200, 201, 202), run.text
    wait_replayed(cluster.primary, cluster.replica)
    return {"node": node.json()["id"], "job": job.json()["id"], "execution": run.json()["id"]}


def test_reads_of_marked_views_go_to_the_replica(cluster: Cluster, objects: dict[str, int]) -> None:
    views = [
        ("/api/v1/jobs/", "jobs_job"),
        (f"/api/v1/jobs/{objects['job']}/", "jobs_job"),
        ("/api/v1/executions/", "jobs_execution"),
        (f"/api/v1/executions/{objects['execution']}/", "jobs_execution"),
        (f"/api/v1/executions/{objects['execution']}/log/", "jobs_execution"),
        ("/api/v1/dead-letters/", "jobs_deadletter"),
        ("/api/v1/nodes/", "nodes_node"),
        (f"/api/v1/nodes/{objects['node']}/", "nodes_node"),
        ("/api/v1/logs/", "jobs_execution"),
        ("/api/v1/metrics/", "jobs_execution"),
    ]
    for path, table in views:
        cluster.mark()
        response = cluster.get(path)
        assert response.status_code == 200, (path, response.text)
        assert cluster.where(table) == {"replica"}, path
        # Authentication (the token, the user) stays on the primary: a fresh login is never "unknown".
        assert cluster.where("knox_authtoken") == {"primary"}, path
    cluster.mark()
    metrics = cluster.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200
    assert cluster.where("jobs_execution") == {"replica"}


def test_writes_and_decisions_stay_on_the_primary(cluster: Cluster, objects: dict[str, int]) -> None:
    cluster.mark()
    job = cluster.post("/api/v1/jobs/", {"name": "w", "kind": "python", "payload": {"handler": "echo"}})
    assert job.status_code == 201, job.text
    run = cluster.post(f"/api/v1/jobs/{job.json()['id']}/run/")  # an execution, placed on the node
    assert run.status_code in (200, 201, 202), run.text
    paused = cluster.post(f"/api/v1/jobs/{job.json()['id']}/pause/")
    assert paused.status_code == 200, paused.text
    assert cluster.where("jobs_job") == {"primary"}
    assert cluster.where("jobs_execution") == {"primary"}
    assert cluster.where("nodes_node") == {"primary"}
    assert cluster.replica.app_statements(APP) == []


def _served_by(cluster: Cluster, server: str, timeout: float = 20) -> None:
    def served() -> bool:
        cluster.mark()
        response = cluster.get("/api/v1/jobs/")
        assert response.status_code == 200, response.text
        return cluster.where("jobs_job") == {server}

    wait_for(served, timeout, interval=0.3, what=f"GET jobs/ read from the {server}")


def test_a_lagging_replica_falls_back_to_the_primary(cluster: Cluster, objects: dict[str, int]) -> None:
    with cluster.replica.connect() as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            with cluster.primary.connect(DBNAME) as primary:
                primary.execute("UPDATE jobs_job SET description = 'behind' WHERE id = %s", [objects["job"]])
            time.sleep(MAX_LAG + 0.5)
            _served_by(cluster, "primary")
            assert "read replica lagging" in cluster.web.log()
            behind = cluster.get(f"/api/v1/jobs/{objects['job']}/")
            assert behind.json()["description"] == "behind"  # the primary's row, not the standby's
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
    _served_by(cluster, "replica")
    assert cluster.web.log().count("read replica in use") >= 2  # at the start, and back now


def _health_just_checked(cluster: Cluster) -> bool:
    cluster.mark()
    assert cluster.get("/api/v1/jobs/").status_code == 200
    return any("pg_is_in_recovery" in sql for sql in cluster.replica.app_statements(APP))


def test_reads_survive_the_replica_stopping(cluster: Cluster, objects: dict[str, int]) -> None:
    _served_by(cluster, "replica")
    # Stop it right after a health check said it is fine: the next view meets it gone in mid-request.
    wait_for(lambda: _health_just_checked(cluster), 20, interval=0.1, what="a replica health check")
    cluster.replica.stop("immediate")
    for path in ("/api/v1/jobs/", "/api/v1/executions/", f"/api/v1/executions/{objects['execution']}/log/"):
        for _ in range(3):  # the first may meet the dead connection mid-view; then the replica is down
            cluster.mark()
            response = cluster.get(path)
            assert response.status_code == 200, (path, response.text)
            assert cluster.where("jobs_execution" if "exec" in path else "jobs_job") == {"primary"}
    log = cluster.web.log()
    assert log.count("read replica down") == 1, log[-3000:]
    assert "read replica down (OperationalError" in log  # found in the view, which ran again on the primary
    assert '" 500 ' not in log
    assert '" 503 ' not in log
