"""Container jobs end to end: a real celery worker on a real (private) Docker Engine, driven through the API.

The node labels itself runtime=docker; container jobs are placed only there; an out-of-memory kill is told
apart through the API; timeout and cancel leave no container; a SIGKILLed worker's container is removed
once its run is recovered; the janitor removes what a run left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
from decimal import Decimal
from typing import Any

import docker.errors
import pytest
from django.test import Client
from rest_framework.test import APIClient

from jobs.executors.docker_engine import LABEL_EXECUTION, LABEL_NODE, LABEL_RUN_KEY
from jobs.models import Execution, Job
from jobs.services import execution_cancel, firing, job_create, job_trigger
from nodes.models import Node
from nodes.services import node_register
from tests.api.conftest import token_client
from tests.conftest import wait_for
from tests.docker_engine import SocketForwarder

pytestmark = pytest.mark.integration
NODE = "cw1@dockerhost"
FAST = {
    "SCHEDULER_SWEEP_SECONDS": "1",
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "2",
    "SCHEDULER_NODE_MEMORY_MB": "2048",
    "SCHEDULER_CONTAINER_JANITOR_SECONDS": "2",
}


def containers_of(engine: Any, **labels: str) -> list[Any]:
    wanted = [LABEL_EXECUTION, *(f"{key}={value}" for key, value in labels.items())]
    client = engine.client()
    try:
        return list(client.containers.list(all=True, filters={"label": wanted}))
    finally:
        client.close()


def wait(predicate: Any, *, what: str, procs: tuple[Any, ...] = (), timeout: float = 90) -> Any:
    try:
        return wait_for(predicate, timeout=timeout, what=what)
    except pytest.fail.Exception:
        logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-5000:]}" for p in procs)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


@pytest.fixture
def docker_worker(start_worker: Any, docker_engine: Any, tmp_path: Any) -> Any:
    """A worker whose Docker Engine is the private one; its node online."""

    def start() -> Any:
        proc = start_worker(name=NODE, concurrency=2, queues="default", DOCKER_HOST=docker_engine.host,
                            SCHEDULER_RUN_DIR=str(tmp_path / "runs"), **FAST)  # fmt: skip
        wait(lambda: Node.objects.filter(name=NODE, status=Node.Status.ONLINE).exists(),
             what="the docker worker's node online", procs=(proc,))  # fmt: skip
        return proc

    return start


def container_job(owner: Any, name: str, command: list[str], engine: Any, **fields: Any) -> Job:
    return job_create(owner=owner, name=name, kind="container",
                      payload={"image": engine.image, "command": command}, **fields)  # fmt: skip


def finished(execution_id: int) -> Execution | None:
    execution = Execution.objects.get(pk=execution_id)
    return execution if execution.status not in Execution.ACTIVE else None


def test_oom_kill_is_visible_through_the_api_and_a_job_under_its_limit_succeeds(
    docker_worker: Any, docker_engine: Any, make_user: Any
) -> None:
    proc = docker_worker()
    node = Node.objects.get(name=NODE)
    assert node.labels.get("runtime") == "docker"
    assert "docker 20." in node.version or "docker " in node.version, node.version
    user = make_user("cora", "submitter")
    api: APIClient = token_client(user)
    hog = {
        "image": docker_engine.image,
        "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
    }
    limits = {"memory_mb": 64, "cpu": 0.5}
    created = api.post("/api/v1/jobs/", {"name": "hog", "kind": "container", "payload": hog,
                                         "resources": limits}, format="json")  # fmt: skip
    assert created.status_code == 201, created.json()
    fits = {
        "image": docker_engine.image,
        "command": ["sh", "-c", "dd if=/dev/zero bs=100M count=1 | sleep 2"],
    }
    limits = {"memory_mb": 128, "cpu": 0.5}
    created_ok = api.post("/api/v1/jobs/", {"name": "fits", "kind": "container", "payload": fits,
                                            "resources": limits}, format="json")  # fmt: skip
    assert created_ok.status_code == 201, created_ok.json()
    runs = [
        api.post(f"/api/v1/jobs/{body.json()['id']}/run/", {}, format="json")
        for body in (created, created_ok)
    ]
    assert [r.status_code for r in runs] == [201, 201], [r.json() for r in runs]
    hog_id, fits_id = (r.json()["id"] for r in runs)
    wait(lambda: finished(hog_id) and finished(fits_id), what="both container runs to end", procs=(proc,))
    hog_run = api.get(f"/api/v1/executions/{hog_id}/").json()
    assert hog_run["status"] == "dead"  # failed with no retries left
    assert hog_run["end_cause"] == "oom_killed"
    assert hog_run["exit_code"] == 137
    assert hog_run["error"] == "killed: out of memory (limit 64 MB)"
    fits_run = api.get(f"/api/v1/executions/{fits_id}/").json()
    assert fits_run["status"] == "succeeded", fits_run
    assert fits_run["end_cause"] == "exited"
    assert 90 * 2**20 <= fits_run["memory_peak_bytes"] <= 128 * 2**20  # 100 MB: over the default 64
    assert Job.objects.get(pk=created_ok.json()["id"]).memory_mb == 128
    oom_only = api.get("/api/v1/executions/", {"end_cause": "oom_killed"}).json()
    assert [row["id"] for row in oom_only["results"]] == [hog_id]
    bad = api.get("/api/v1/executions/", {"end_cause": "melted"})
    assert bad.status_code == 400
    assert "end_cause" in str(bad.json())
    # The same run in the admin (filtered by its cause) and on the dashboard.
    admin = Client()
    admin.force_login(make_user("root", is_staff=True, is_superuser=True))
    listed = admin.get("/admin/jobs/execution/", {"end_cause": "oom_killed"}).content.decode()
    assert f"/admin/jobs/execution/{hog_id}/change/" in listed
    assert f"/admin/jobs/execution/{fits_id}/change/" not in listed
    detail = admin.get(f"/admin/jobs/execution/{hog_id}/change/").content.decode()
    assert "out of memory" in detail
    assert "killed: out of memory (limit 64 MB)" in detail
    viewer = Client()
    viewer.force_login(user)
    assert "out of memory" in viewer.get("/dashboard/").content.decode()
    assert containers_of(docker_engine) == []


def test_timeout_and_cancel_leave_no_container(
    docker_worker: Any, docker_engine: Any, make_user: Any
) -> None:
    proc = docker_worker()
    owner = make_user("tim", "submitter")
    slow = container_job(owner, "slow", ["sleep", "300"], docker_engine, timeout_seconds=3)
    timed = job_trigger(job=slow)
    wait(lambda: finished(timed.pk), what="the timeout", procs=(proc,))
    timed.refresh_from_db()
    assert timed.status == "timed_out"
    assert timed.end_cause == "timed_out"
    stuck = container_job(owner, "stuck", ["sleep", "300"], docker_engine)
    run = job_trigger(job=stuck)
    wait(
        lambda: containers_of(docker_engine, **{LABEL_EXECUTION: str(run.pk)}),
        what="its container",
        procs=(proc,),
    )
    assert execution_cancel(execution_id=run.pk)
    wait(lambda: not containers_of(docker_engine), what="the cancelled run's container gone", procs=(proc,))
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_a_sigkilled_worker_leaves_no_container_once_its_run_is_recovered(
    docker_worker: Any, docker_engine: Any, make_user: Any
) -> None:
    proc = docker_worker()
    owner = make_user("kim", "submitter")
    job = container_job(owner, "long", ["sleep", "300"], docker_engine)
    run = job_trigger(job=job)
    wait(
        lambda: containers_of(docker_engine, **{LABEL_EXECUTION: str(run.pk)}),
        what="its container",
        procs=(proc,),
    )
    proc.kill_group()  # the worker and its pool, SIGKILL: the container keeps running on the engine
    assert [c.status for c in containers_of(docker_engine)] == ["running"]
    # The same node starts again: its earlier start's run is lost, its container removed.
    again = docker_worker()
    wait(lambda: Execution.objects.get(pk=run.pk).status not in ("queued", "running"),
         what="the run recovered", procs=(again,))  # fmt: skip
    assert Execution.objects.get(pk=run.pk).status in ("lost", "dead")
    assert containers_of(docker_engine) == []


def test_a_killed_pool_process_leaves_no_container(
    docker_worker: Any, docker_engine: Any, make_user: Any
) -> None:
    proc = docker_worker()
    owner = make_user("pat", "submitter")
    job = container_job(owner, "long", ["sleep", "300"], docker_engine)
    run = job_trigger(job=job)
    wait(
        lambda: containers_of(docker_engine, **{LABEL_EXECUTION: str(run.pk)}),
        what="its container",
        procs=(proc,),
    )
    pid = Execution.objects.get(pk=run.pk).worker_pid
    assert pid
    os.kill(pid, signal.SIGKILL)  # the pool process running it; the main process's liveness check notices
    wait(lambda: Execution.objects.get(pk=run.pk).status not in ("queued", "running"), what="the run lost",
         procs=(proc,))  # fmt: skip
    wait(lambda: not containers_of(docker_engine), what="its container removed", procs=(proc,))


def test_the_janitor_removes_containers_of_runs_that_are_over(
    docker_worker: Any, docker_engine: Any, make_user: Any
) -> None:
    def stray(node: str) -> Any:
        """A running container of `node` for an execution the database does not know (e.g. deleted)."""
        client = docker_engine.client()
        try:
            labels = {LABEL_EXECUTION: "999999", LABEL_NODE: node, LABEL_RUN_KEY: "0" * 32}
            return client.containers.run(docker_engine.image, ["sleep", "300"], network_mode="none",
                                         labels=labels, detach=True)  # fmt: skip
        finally:
            client.close()

    left, other = stray(NODE), stray("someone@else")  # left behind before this worker started
    proc = docker_worker()  # its start removes what is over
    wait(
        lambda: not containers_of(docker_engine, **{LABEL_NODE: NODE}),
        what="the janitor at start",
        procs=(proc,),
    )
    assert [c.id for c in containers_of(docker_engine)] == [other.id]  # another node's is not ours to remove
    assert left.id not in [c.id for c in containers_of(docker_engine)]
    # And while it runs (every SCHEDULER_CONTAINER_JANITOR_SECONDS): one that appears later goes too.
    with contextlib.suppress(docker.errors.APIError):  # the janitor may remove it before it starts
        stray(NODE)
    wait(lambda: not containers_of(docker_engine, **{LABEL_NODE: NODE}), what="the periodic janitor",
         procs=(proc,))  # fmt: skip
    assert [c.id for c in containers_of(docker_engine)] == [other.id]
    other.remove(force=True)


@pytest.mark.django_db(transaction=True)
def test_container_jobs_wait_for_a_docker_node(make_user: Any) -> None:
    owner = make_user("pia", "submitter")
    plain = node_register(name="plain@host", hostname="host", ip_address=None, cpu_capacity=Decimal(4),
                          memory_mb_capacity=4096, labels={}, version="test")  # fmt: skip
    job = job_create(
        owner=owner, name="c", kind="container", payload={"image": "busybox", "command": ["true"]}
    )
    execution = job_trigger(job=job)
    firing.pending_place_pass()
    execution.refresh_from_db()
    assert execution.status == "pending"
    assert execution.pending_reason == "no online node with labels runtime=docker"
    shell = job_create(owner=make_user("sam", "submitter", run_shell=True), name="s", kind="shell",
                       payload={"command": ["true"]})  # fmt: skip
    shell_run = job_trigger(job=shell)
    shell_run.refresh_from_db()
    assert shell_run.node_id == plain.pk  # a shell job (no sandbox) needs no engine
    node_register(name="box@host", hostname="host", ip_address=None, cpu_capacity=Decimal(4),
                  memory_mb_capacity=4096, labels={"runtime": "docker"}, version="test")  # fmt: skip
    firing.pending_place_pass()
    execution.refresh_from_db()
    assert execution.status == "queued"
    assert execution.node is not None
    assert execution.node.name == "box@host"


def test_bad_container_payloads_are_400_naming_the_field(db: Any, make_user: Any) -> None:
    api = token_client(make_user("bea", "submitter"))
    response = api.post("/api/v1/jobs/", {"name": "bad", "kind": "container",
                                          "payload": {"image": "Not An Image!", "network": "host", "x": 1}},
                        format="json")  # fmt: skip
    assert response.status_code == 400
    body = str(response.json())
    for field in ("payload.image", "payload.network", "unknown keys: x"):
        assert field in body, body
    assert not Job.objects.filter(name="bad").exists()


@pytest.mark.django_db(transaction=True)
def test_sandboxed_shell_jobs_are_placed_on_docker_nodes_only(make_user: Any, settings: Any) -> None:
    settings.SCHEDULER_SHELL_SANDBOX = "container"
    settings.SCHEDULER_SHELL_SANDBOX_IMAGE = "busybox"
    node_register(name="plain@host", hostname="host", ip_address=None, cpu_capacity=Decimal(4),
                  memory_mb_capacity=4096, labels={}, version="test")  # fmt: skip
    shell = job_create(owner=make_user("sam", "submitter", run_shell=True), name="s", kind="shell",
                       payload={"command": ["true"]})  # fmt: skip
    run = job_trigger(job=shell)
    run.refresh_from_db()
    assert run.status == "pending"
    assert run.pending_reason == "no online node with labels runtime=docker"


def test_the_bridge_network_needs_run_shell_and_limits_the_engine_refuses_are_400(
    db: Any, make_user: Any
) -> None:
    def create(client: APIClient, name: str, payload: dict[str, Any], **fields: Any) -> Any:
        body = {"name": name, "kind": "container", "payload": {"image": "busybox", **payload}, **fields}
        return client.post("/api/v1/jobs/", body, format="json")

    plain = token_client(make_user("nel", "submitter"))
    trusted = token_client(make_user("tru", "submitter", run_shell=True))
    assert create(plain, "isolated", {"command": ["true"]}).status_code == 201  # network none: no permission
    refused = create(plain, "bridged", {"network": "bridge"})
    assert refused.status_code == 403
    assert "jobs.run_shell" in str(refused.json())
    assert not Job.objects.filter(name="bridged").exists()
    assert create(trusted, "bridged", {"network": "bridge"}).status_code == 201
    # Editing a job of one's own onto the bridge network is checked the same way.
    isolated = Job.objects.get(name="isolated")
    edit = plain.patch(f"/api/v1/jobs/{isolated.pk}/", {"payload": {"image": "busybox", "network": "bridge"}},
                       format="json")  # fmt: skip
    assert edit.status_code == 403
    isolated.refresh_from_db()
    assert isolated.payload.get("network", "none") == "none"
    tiny = create(plain, "tiny", {}, resources={"memory_mb": 3})
    assert tiny.status_code == 400, tiny.json()
    assert "memory_mb" in str(tiny.json())
    assert create(plain, "unlimited", {}, resources={"memory_mb": 0}).status_code == 201


def test_the_runtime_label_follows_the_engine(start_worker: Any, docker_engine: Any, tmp_path: Any) -> None:
    """An engine that comes after the worker started labels its node; one that goes away unlabels it."""
    link = tmp_path / "engine.sock"  # nothing listens here yet
    env = {**FAST, "SCHEDULER_CONTAINER_JANITOR_SECONDS": "1", "SCHEDULER_RUN_DIR": str(tmp_path / "runs")}
    proc = start_worker(name=NODE, concurrency=1, queues="default", DOCKER_HOST=f"unix://{link}", **env)

    def labels() -> dict[str, Any]:
        node = Node.objects.filter(name=NODE, status=Node.Status.ONLINE).first()
        return node.labels if node is not None else {"starting": True}

    wait(lambda: "starting" not in labels(), what="the node online", procs=(proc,))
    assert "runtime" not in labels()
    forwarder = SocketForwarder(link, docker_engine.host.removeprefix("unix://"))
    forwarder.start()
    wait(lambda: labels().get("runtime") == "docker", what="the runtime label", procs=(proc,))
    assert "docker " in Node.objects.get(name=NODE).version
    forwarder.cut_all()
    wait(lambda: "runtime" not in labels(), what="the label gone with the engine", procs=(proc,))
