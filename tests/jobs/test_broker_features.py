"""What the product asks of its broker, on Redis and on RabbitMQ alike (both runs of make test): job
priorities order the node queue; on RabbitMQ, quorum queues as an option."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from django.conf import settings

from jobs.models import Execution, Job
from jobs.services import job_create, job_trigger
from nodes.models import Node
from tests.conftest import ROOT, subprocess_env, wait_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix]
FAST = {"SCHEDULER_HEARTBEAT_SECONDS": "1", "SCHEDULER_SWEEP_SECONDS": "1", "SCHEDULER_NODE_CPU": "4",
        "SCHEDULER_NODE_MEMORY_MB": "4096"}  # fmt: skip


def sleep_job(owner, name: str, seconds: float, priority: int) -> Job:
    return job_create(owner=owner, name=name, kind="python", priority=priority,
                      payload={"handler": "sleep", "kwargs": {"seconds": seconds}})  # fmt: skip


def test_higher_priority_jobs_leave_the_node_queue_first(start_worker) -> None:
    proc = start_worker(name="prio@host", concurrency=1, queues="default", **FAST)
    wait_for(lambda: Node.objects.filter(name="prio@host", status="online").exists(), 90,
             what=f"node online\n{proc.log()[-3000:]}")  # fmt: skip
    owner = UserFactory()
    blocker = job_trigger(job=sleep_job(owner, "blocker", 3, 5))
    wait_for(lambda: Execution.objects.get(pk=blocker.pk).status == "running", 60, what="the blocker running")
    # The one slot is busy: these wait in the node's queue, low and high priority interleaved.
    runs = {}
    for n in range(3):
        runs[f"low{n}"] = job_trigger(job=sleep_job(owner, f"low{n}", 0, 1))
        runs[f"high{n}"] = job_trigger(job=sleep_job(owner, f"high{n}", 0, 9))
    ids = [run.pk for run in runs.values()]
    wait_for(lambda: Execution.objects.filter(pk__in=ids, status="succeeded").count() == 6, 120,
             what=f"all six ran\n{proc.log()[-3000:]}")  # fmt: skip
    order = list(
        Execution.objects.filter(pk__in=ids).order_by("started_at").values_list("job__name", flat=True)
    )
    assert [name[:-1] for name in order] == ["high"] * 3 + ["low"] * 3, order


@pytest.fixture
def quorum_vhost():
    """A vhost of this test's own: its queues are all quorum queues (the run's vhost has classic ones)."""
    vhost = f"scheduler-test-quorum-{os.getpid()}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        yield vhost
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], capture_output=True, timeout=120)


def test_quorum_queues_on_rabbitmq(start_worker, request) -> None:
    if not settings.BROKER_IS_AMQP:
        pytest.skip("quorum queues are RabbitMQ's")
    vhost = request.getfixturevalue("quorum_vhost")
    broker = settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + f"/{vhost}"
    quorum = {**FAST, "SCHEDULER_RABBITMQ_QUEUE_TYPE": "quorum", "CELERY_BROKER_URL": broker}
    proc = start_worker(name="quorum@host", concurrency=1, queues="default", **quorum)
    wait_for(lambda: Node.objects.filter(name="quorum@host", status="online").exists(), 90,
             what=f"node online\n{proc.log()[-3000:]}")  # fmt: skip
    job = sleep_job(UserFactory(), "q", 0, 5)
    # Published by a process configured like the worker (this test process is on the run's vhost).
    script = textwrap.dedent(f"""
        import django; django.setup()
        from jobs.models import Job
        from jobs.services import job_trigger
        print(job_trigger(job=Job.objects.get(pk={job.pk})).pk)
    """)
    env = subprocess_env(DJANGO_SETTINGS_MODULE="scheduler_project.settings", **quorum)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    execution_id = int(out.strip().splitlines()[-1])
    wait_for(lambda: Execution.objects.get(pk=execution_id).status == "succeeded", 90,
             what=f"the run on a quorum queue\n{proc.log()[-3000:]}")  # fmt: skip
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type"],
                            capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    types = dict(line.split()[:2] for line in listed.splitlines() if len(line.split()) >= 2)
    assert types.get("node.quorum@host") == "quorum", listed
    assert types.get("default") == "quorum", listed
