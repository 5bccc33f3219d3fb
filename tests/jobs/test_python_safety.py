"""Python jobs are not a weapon against the workers (issue 11, item 5): the demo handlers are off outside
development and test, a timeout or cancel stops a handler only at a safe point (never inside a database
query nor in the worker's own bookkeeping), and progress writes stay bounded whatever the handler's loop."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection
from knox.models import AuthToken
from rest_framework.test import APIClient

from jobs.executors import python
from jobs.executors.base import LocalControl
from jobs.models import Execution
from jobs.services import firing, job_create, job_trigger
from nodes.models import Node, ResourceAllocation
from tests.conftest import database_connect, wait_for
from tests.factories import NodeFactory, UserFactory
from worker import runner

WORKER = "safety@testhost"
FAST = {
    "SCHEDULER_SWEEP_SECONDS": "1",
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "4",
    "SCHEDULER_NODE_MEMORY_MB": "4096",
}
ACTIVE = {Execution.Status.PENDING, Execution.Status.QUEUED, Execution.Status.RUNNING}

# Every UPDATE of an execution row, recorded by a trigger in the test database: an exact count, at once
# (pg_stat_user_tables lags behind by up to the statistics flush interval).
_AUDIT_ON = """
CREATE TABLE test_execution_writes (execution_id bigint, progress double precision, status text);
CREATE FUNCTION test_execution_writes_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO test_execution_writes VALUES (NEW.id, NEW.progress, NEW.status); RETURN NEW; END $$;
CREATE TRIGGER test_execution_writes AFTER UPDATE ON jobs_execution
    FOR EACH ROW EXECUTE FUNCTION test_execution_writes_log();
"""
_AUDIT_OFF = """
DROP TRIGGER IF EXISTS test_execution_writes ON jobs_execution;
DROP FUNCTION IF EXISTS test_execution_writes_log();
DROP TABLE IF EXISTS test_execution_writes;
"""


@pytest.fixture
def execution_writes(transactional_db) -> Iterator[Callable[[int], int]]:
    """How many times an execution's row was updated (the trigger is dropped before the test's flush)."""
    conn = database_connect()
    conn.execute(_AUDIT_OFF)
    conn.execute(_AUDIT_ON)

    def count(execution_id: int) -> int:
        row = conn.execute(
            "SELECT count(*) FROM test_execution_writes WHERE execution_id = %s", [execution_id]
        ).fetchone()
        return int(row[0]) if row else 0

    yield count
    conn.execute(_AUDIT_OFF)
    conn.close()


@pytest.fixture
def worker(start_worker):
    proc = start_worker(name=WORKER, concurrency=1, queues="default", **FAST)
    wait_for(
        lambda: Node.objects.filter(name=WORKER, status=Node.Status.ONLINE).exists(),
        timeout=90,
        what=f"the worker's node to be online; log:\n{proc.log()[-3000:]}",
    )
    return proc


@pytest.fixture
def register() -> Iterator[Callable[[str, python.Handler], None]]:
    """Register a test-only handler in this process, removed afterwards."""
    names: list[str] = []

    def add(name: str, fn: python.Handler) -> None:
        python.handler(name)(fn)
        names.append(name)

    yield add
    for name in names:
        python.HANDLERS.pop(name, None)


# --- the attack of the issue, against a real worker ------------------------------------------------


@pytest.mark.integration
def test_progress_in_a_tight_loop_times_out_releases_its_capacity_and_writes_little(worker, execution_writes):
    job = job_create(
        owner=UserFactory(),
        name="tight-progress",
        kind="python",
        payload={"handler": "progress", "kwargs": {"steps": 10**9, "delay": 0}},
        timeout_seconds=3,
        cpu="1",
    )
    execution = job_trigger(job=job)
    started = time.monotonic()
    wait_for(
        lambda: Execution.objects.get(pk=execution.pk).status not in ACTIVE,
        timeout=90,
        what=f"the run to end (it is {Execution.objects.get(pk=execution.pk).status}); "
        f"worker log:\n{worker.log()[-4000:]}",
    )
    elapsed = time.monotonic() - started
    execution.refresh_from_db()
    assert execution.status == Execution.Status.TIMED_OUT, (execution.status, execution.error)
    assert "timed out after 3s" in execution.error
    assert execution.progress  # it reported, and its last report was stored
    assert not execution.allocation.active  # its capacity was released
    wait_for(lambda: Node.objects.get(name=WORKER).cpu_allocated == 0, timeout=30, what="the node's cpu at 0")
    # The claim, the finish, and about one progress and one output store a second of the run.
    writes = execution_writes(execution.pk)
    assert writes <= 4 + 3 * elapsed, f"{writes} updates of the execution row in {elapsed:.1f}s"
    log = worker.log()
    assert "the run goes on" not in log, log[-4000:]  # no database call was cut (ClaimControl's warning)
    assert "Traceback" not in log, log[-4000:]
    assert worker.alive()


# --- where the stop lands, in this process (main thread: the SIGALRM path of a pool process) ------------


def _slow_queries(ctx: python.HandlerContext, seen: dict[str, Any]) -> None:
    """Spends nearly all its time inside queries: an interrupt at a random moment lands in one."""
    with connection.cursor() as cursor:
        while True:
            seen["queries"] += 1
            try:
                cursor.execute("SELECT pg_sleep(0.3)")
            except BaseException:
                # Where the stop came out: IDLE if the query had completed, ACTIVE if it was cut.
                seen["at_stop"] = connection.connection.info.transaction_status.name
                raise


def test_a_timeout_never_cuts_a_query_of_the_handler(transactional_db, register):
    register("test_slow_queries", _slow_queries)
    seen = {"queries": 0}
    outcome = python.run({"handler": "test_slow_queries", "kwargs": {"seen": seen}}, timeout=1)
    assert outcome.status == "timed_out"
    assert seen["queries"] >= 1
    assert seen["at_stop"] == "IDLE"  # the stop landed after the query completed, not inside it
    with connection.cursor() as cursor:  # and the worker's next query works
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


class _SlowStore(LocalControl):
    """A control whose progress store takes a while (a busy database): the handler's thread waits in it."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    def progress_update(self, value: float) -> None:
        self.started += 1
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.2)")
        super().progress_update(value)


def test_a_timeout_never_cuts_the_workers_progress_store(transactional_db):
    control = _SlowStore()
    outcome = python.run(
        {"handler": "progress", "kwargs": {"steps": 10**9, "delay": 0}}, timeout=2, control=control
    )
    assert outcome.status == "timed_out"
    assert control.started >= 1
    assert len(control.progress) == control.started  # every store that began, finished
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


class _SlowToDescribe(Exception):
    """An exception whose message reads the database (say, an object's description): slow to record."""

    def __str__(self) -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2.5), 'described'")
            row = cursor.fetchone()
        return str(row[1]) if row else ""


def _fails_slowly(ctx: python.HandlerContext) -> None:
    raise _SlowToDescribe


def test_the_stuck_running_case_a_stop_during_the_workers_bookkeeping_ends_the_run(
    transactional_db, register, monkeypatch
):
    """The timeout fires while the worker records the handler's failure: the run still ends and its
    capacity is released (it was left `running`, holding its capacity, when the stop escaped)."""
    register("test_fails_slowly", _fails_slowly)
    node = NodeFactory(name="unit-safety@testhost")
    monkeypatch.setenv("SCHEDULER_NODE_NAME", node.name)
    job = job_create(
        owner=UserFactory(), name="slow-failure", kind="python", payload={"handler": "test_fails_slowly"},
        timeout_seconds=1, cpu="1",
    )  # fmt: skip
    execution = firing.fire(job_id=job.pk, scheduled_for=datetime(2030, 1, 1, tzinfo=UTC))
    assert execution is not None
    assert execution.node == node
    held = ResourceAllocation.objects.filter(execution=execution, released_at__isnull=True)
    try:
        status = runner.execution_run(execution_id=execution.pk)
    except BaseException as exc:  # noqa: BLE001 - the bug: the executor's stop escaped the worker
        status = f"escaped: {type(exc).__name__}"
        connection.close()  # it may have left the connection mid-query
    execution.refresh_from_db()
    assert status == "failed", (
        f"{status}; the execution is {execution.status}, capacity held: {held.exists()}"
    )
    assert execution.status == Execution.Status.DEAD  # failed, no retries left
    assert "_SlowToDescribe: described" in execution.error
    assert not held.exists()
    assert Node.objects.get(pk=node.pk).cpu_allocated == 0


def _stubborn(ctx: python.HandlerContext) -> str:
    with contextlib.suppress(BaseException):  # a handler that swallows its stop
        time.sleep(60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ctx.progress(50)
        time.sleep(0.01)
    return "ran on"


def test_a_handler_that_swallows_its_stop_is_stopped_at_its_next_call(register):
    register("test_stubborn", _stubborn)
    started = time.monotonic()
    outcome = python.run({"handler": "test_stubborn"}, timeout=1)
    assert outcome.status == "timed_out"
    assert outcome.result is None
    assert time.monotonic() - started < 20  # not its 30 s loop


# --- progress is rate-limited by the executor itself ------------------------------------------------


def test_progress_in_a_tight_loop_reaches_the_control_about_once_a_second():
    control = LocalControl()  # stores every report it gets: only the executor limits them
    started = time.monotonic()
    outcome = python.run(
        {"handler": "progress", "kwargs": {"steps": 20_000, "delay": 0}}, timeout=60, control=control
    )
    elapsed = time.monotonic() - started
    assert outcome.status == "succeeded"
    assert control.progress[-1] == 100.0  # the last report is never lost
    assert len(control.progress) <= 2 + elapsed / python.PROGRESS_SECONDS, (len(control.progress), elapsed)


# --- demo handlers only where they are meant to be ------------------------------------------------


def test_demo_handlers_default_on_only_outside_production():
    from django.conf import settings

    assert settings.ENVIRONMENT == "test"
    assert settings.SCHEDULER_DEMO_HANDLERS is True
    assert {"crash", "progress"} <= set(python.handlers_available())


@pytest.mark.parametrize("name", ["crash", "progress"])
def test_with_demo_handlers_off_a_job_naming_one_is_refused(db, settings, make_user, name):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SCHEDULER_DEMO_HANDLERS = False
    _, token = AuthToken.objects.create(make_user("sam", "submitter"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    body = {"name": "poison", "kind": "python", "payload": {"handler": name}, "schedule": None}
    response = client.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    message = " ".join(response.json()["payload.handler"])
    assert f"'{name}' is a demo handler" in message
    assert "SCHEDULER_DEMO_HANDLERS" in message
    settings.SCHEDULER_DEMO_HANDLERS = True
    assert client.post("/api/v1/jobs/", body, format="json").status_code == 201


def test_with_demo_handlers_off_a_worker_refuses_to_run_crash(settings):
    settings.SCHEDULER_DEMO_HANDLERS = False  # e.g. a job submitted before they were turned off
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports by its exit status
        outcome = python.run({"handler": "crash"}, timeout=10)
        os._exit(0 if outcome.status == "failed" and "demo handler" in outcome.error else 1)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), "crash ran and killed its process"
    assert os.WEXITSTATUS(status) == 0
