"""Output streamed while a real worker runs a shell job: read live by offset, followed by the command."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from jobs.models import Execution, Job
from jobs.services import job_trigger
from monitoring.models import ExecutionLogChunk
from monitoring.selectors import log_read
from nodes.models import Node
from tests.conftest import wait_for
from tests.factories import JobFactory

NAME = "lw1@testhost"
SCRIPT = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done"


pytestmark = pytest.mark.integration


def test_output_is_stored_while_the_job_runs_and_followed_to_the_end(start_worker):
    worker = start_worker(name=NAME, concurrency=1, SCHEDULER_HEARTBEAT_SECONDS="1", SCHEDULER_NODE_CPU="2")
    wait_for(
        lambda: Node.objects.filter(name=NAME, status=Node.Status.ONLINE).exists(),
        timeout=90,
        what=f"node online; log:\n{worker.log()[-3000:]}",
    )
    job = JobFactory(kind=Job.Kind.SHELL, payload={"command": ["sh", "-c", SCRIPT]})
    execution = job_trigger(job=job)

    def live() -> bool:
        piece = log_read(execution_id=execution.pk)
        return piece.status == Execution.Status.RUNNING and "line 2\n" in piece.text

    wait_for(live, timeout=60, interval=0.1, what=f"output while running; log:\n{worker.log()[-3000:]}")
    out, err = StringIO(), StringIO()
    call_command(
        "execution_follow", str(execution.pk), "--interval", "0.2", "--timeout", "60", stdout=out, stderr=err
    )
    assert out.getvalue() == "".join(f"line {i}\n" for i in range(1, 7))
    assert "ended: succeeded" in err.getvalue()
    assert ExecutionLogChunk.objects.filter(execution=execution).count() >= 2  # stored in pieces, as it ran
