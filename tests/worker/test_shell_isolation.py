"""Shell jobs, as an attacker writes them, against a real worker running as root with SCHEDULER_SHELL_USER.

Each attack runs as a job and must fail: reading the worker's environment, reading files of the worker's
user, keeping a process alive after the run (with and without leaving the process group and the run's
environment), and a fork bomb beyond the process limit.
"""

from __future__ import annotations

import os
import pwd
import uuid
from pathlib import Path

import psutil
import pytest

from jobs.models import Execution
from jobs.services import job_create, job_trigger
from nodes.models import Node
from tests.conftest import processes_with, wait_for

# The job's interpreter must be one the job's user can run (the test's own may live under /root).
PYTHON = "/usr/bin/python3"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as another user only when the worker is root"),
    pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"{PYTHON} is needed to run the attacks"),
]
SECRET = f"secret-{uuid.uuid4()}"


@pytest.fixture
def worker(start_worker, tmp_path):
    proc = start_worker(
        name="iso@testhost",
        concurrency=2,
        queues="default",
        SCHEDULER_SHELL_USER="nobody",
        SCHEDULER_SHELL_MAX_PROCESSES="40",
        SCHEDULER_HEARTBEAT_SECONDS="1",
        SCHEDULER_RUN_DIR=str(tmp_path / "runs"),
        SECRET_KEY=SECRET,
        FLOWER_BASIC_AUTH=f"admin:{SECRET}",
    )
    wait_for(lambda: Node.objects.filter(name="iso@testhost").exists(), timeout=90, what="the node")
    return proc


def run(owner, script: str, *args: str, timeout: int = 60) -> Execution:
    job = job_create(
        owner=owner,
        name="attack",
        kind="shell",
        payload={"command": [PYTHON, "-c", script, *args]},
        timeout_seconds=timeout,
    )
    execution = job_trigger(job=job)
    ended: Execution = wait_for(
        lambda: Execution.objects.filter(pk=execution.pk).exclude(status__in=["queued", "running"]).first(),
        timeout=120,
        what="the attack job to end",
    )  # type: ignore[assignment]
    return ended


READ_PARENT = """
import os, sys
print("uid", os.getuid(), "cwd", os.getcwd(), "entries", os.listdir("."), "home", os.environ.get("HOME"))
for path in (f"/proc/{os.getppid()}/environ", "/proc/1/environ", sys.argv[1]):
    try:
        print(path, open(path, "rb").read()[:4000])
    except OSError as exc:
        print(path, "refused:", exc.strerror)
"""


def test_a_job_cannot_read_the_workers_secrets_and_runs_in_an_empty_directory(worker, shell_user, tmp_path):
    private = tmp_path / "admin-password"  # like var/admin-password: the worker's user only
    private.write_text(f"admin {SECRET}\n")
    private.chmod(0o600)
    done = run(shell_user, READ_PARENT, str(private))
    assert done.status == "succeeded", (done.error, done.output)
    assert SECRET not in done.output
    assert "DATABASE_URL" not in done.output
    assert f"uid {pwd.getpwnam('nobody').pw_uid}" in done.output
    assert done.output.count("refused: Permission denied") == 3, done.output
    assert "entries []" in done.output  # a fresh, empty working directory (also its HOME)
    workdir = done.output.split("cwd ", 1)[1].split(" entries", 1)[0]
    assert f"home {workdir}" in done.output
    assert not Path(workdir).exists()  # removed after the run


ESCAPE = """
import os, subprocess, sys
sleeper = [sys.executable, "-c", "import time; time.sleep(97)", sys.argv[1]]
subprocess.Popen(sleeper, start_new_session=True)  # leaves the job's process group
subprocess.Popen(sleeper, start_new_session=True, env={})  # and also drops the run's environment
print("escaped")
"""


def test_nothing_a_job_started_outlives_it(worker, shell_user):
    marker = f"escape-{uuid.uuid4()}"
    done = run(shell_user, ESCAPE, marker)
    assert done.status == "succeeded", (done.error, done.output)
    assert "escaped" in done.output
    wait_for(lambda: not processes_with(marker), timeout=30, what="the escaped processes to be killed")


BOMB = """
import os, time
children = 0
for _ in range(500):
    try:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        children += 1
    except OSError as exc:
        print("fork refused after", children, "children:", exc.strerror, flush=True)
        break
time.sleep(300)
"""


def test_a_fork_bomb_stops_at_the_process_limit_and_dies_with_its_run(worker, shell_user):
    nobody = pwd.getpwnam("nobody").pw_uid

    def of_nobody() -> int:
        count = 0
        for proc in psutil.process_iter(["uids"]):
            if proc.info["uids"] is not None and proc.info["uids"].real == nobody:
                count += 1
        return count

    before = of_nobody()
    done = run(shell_user, BOMB, timeout=8)
    assert done.status == "timed_out", (done.error, done.output)
    assert "fork refused after" in done.output
    refused_after = int(done.output.split("fork refused after ", 1)[1].split()[0])
    assert refused_after < 40
    wait_for(lambda: of_nobody() <= before, timeout=30, what="the bomb's processes to be gone")
