"""What a run leaves behind is found and killed: its recorded process group and whatever carries its key."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psutil
import pytest

from jobs.executors import shell
from tests.conftest import processes_with, wait_for
from worker.processes import RUN_KEY_ENV, leftovers_kill, run_forget, run_key, run_record

# A job that leaves its process group: a grandchild in a session of its own, then the job waits.
ESCAPE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1] + '-escaped'],"
    " start_new_session=True)\n"
    "time.sleep(300)\n"
)


@pytest.fixture
def run_dir(tmp_path, settings):
    settings.SCHEDULER_RUN_DIR = str(tmp_path / "runs")
    return tmp_path / "runs"


def test_leftovers_kill_kills_the_group_and_what_left_it(run_dir):
    token, marker = uuid.uuid4(), f"escape-{uuid.uuid4()}"
    job = subprocess.Popen(
        [sys.executable, "-c", ESCAPE, marker],
        env={**os.environ, RUN_KEY_ENV: run_key(token)},
        start_new_session=True,
    )
    run_record(token, job.pid)
    assert (run_dir / run_key(token)).exists()
    wait_for(lambda: processes_with(f"{marker}-escaped"), timeout=30, what="the escaped grandchild")
    [escaped] = processes_with(f"{marker}-escaped")
    assert os.getsid(escaped.pid) != os.getsid(job.pid)  # not in the job's session: killpg misses it

    assert leftovers_kill(token) is True
    job.wait(timeout=10)
    wait_for(lambda: not processes_with(f"{marker}-escaped"), timeout=10, what="the grandchild to be killed")
    assert not (run_dir / run_key(token)).exists()


def test_leftovers_kill_leaves_other_runs_alone(run_dir):
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env={**os.environ, RUN_KEY_ENV: run_key(theirs)},
        start_new_session=True,
    )
    try:
        assert leftovers_kill(mine) is True  # nothing of it: gone already
        assert leftovers_kill(None) is True
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_recorded_pid_reused_by_another_process_is_not_killed(run_dir):
    token = uuid.uuid4()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        # A record whose start time does not match: the pid belongs to somebody else now.
        (run_dir).mkdir(parents=True, exist_ok=True)
        (run_dir / run_key(token)).write_text(f"{bystander.pid} 12345.0\n")
        assert leftovers_kill(token) is True
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        run_forget(token)


class ExplodingControl:
    """A control whose check fails the way a bug would: the executor must still kill the job."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.ended = 0

    def stop_reason(self) -> str | None:
        raise RuntimeError("control broke")

    def output_update(self, output: str, truncated: bool) -> None:
        pass

    def progress_update(self, value: float) -> None:
        pass

    def process_env(self) -> dict[str, str]:
        return {RUN_KEY_ENV: "k"}

    def process_started(self, pid: int) -> None:
        self.started.append(pid)

    def process_ended(self) -> None:
        self.ended += 1


def test_the_shell_executor_kills_the_group_however_supervision_ends():
    control = ExplodingControl()
    with pytest.raises(RuntimeError, match="control broke"):
        shell.run({"command": ["sleep", "300"]}, timeout=600, control=control)
    [pid] = control.started
    assert control.ended == 1
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
