"""What a run started on this host, so that whatever it left behind is killed before the run is declared lost.

A shell job runs in its own session, so it outlives the pool process that started it when that process is
SIGKILLed (or the whole worker is). Each run is known by its run key (derived from its claim token, so
unique across databases and attempts): the executor puts it in the job's environment as SCHEDULER_RUN_KEY,
and records the job's process group leader in a small file named by the key in SCHEDULER_RUN_DIR. Before
an attempt on a live node is marked lost (by the worker's main process, by the next start of the worker
under the same name, or by the pool process that receives the redelivered message) `leftovers_kill`
kills that group and every process still carrying the key (a job that called setsid left the group, not
its environment), and answers whether they are gone. An attempt whose processes cannot be proven gone
stays running until they are, or until its node is declared offline.

A pool process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): what a job started and left behind
(`setsid sleep 97 &`) becomes its child when the job's own process exits, and `run_end` kills every
descendant once the job's group is gone (a prefork pool process runs one job at a time; elsewhere only the
descendants carrying the run's key are killed).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import psutil
from django.conf import settings

from jobs.executors.docker_engine import run_containers_remove

logger = logging.getLogger(__name__)
RUN_KEY_ENV = "SCHEDULER_RUN_KEY"
KILL_ROUNDS = 5  # a job forking while it is killed: look again, up to this many times
PR_SET_CHILD_SUBREAPER = 36
_state = {"reaper": False}


def subreaper_become() -> bool:
    """Make this process (a pool process, one run at a time) the reaper of its orphaned descendants."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _state["reaper"] = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _state["reaper"] = False
    if not _state["reaper"]:
        logger.warning("cannot become a child subreaper: processes that leave a job's group may outlive it")
    return _state["reaper"]


def _carries(proc: psutil.Process, key: str) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.environ().get(RUN_KEY_ENV) == key
    return False


def run_end(claim_token: uuid.UUID) -> None:
    """The executor killed and reaped the job's process group: kill whatever the job left outside it."""
    key = run_key(claim_token)
    me = psutil.Process()
    for _ in range(KILL_ROUNDS):
        try:
            left = [p for p in me.children(recursive=True) if _state["reaper"] or _carries(p, key)]
        except psutil.Error:
            break
        if not left:
            break
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=2)  # reaps those that are our children now
        logger.warning("killed %d process(es) a job left outside its process group", len(left))
    run_forget(claim_token)


def run_key(claim_token: uuid.UUID) -> str:
    """The key a run's processes carry; not the claim token itself (that fences the claim)."""
    return hashlib.sha256(b"run:" + claim_token.bytes).hexdigest()[:32]


def run_dir() -> Path:
    path = Path(settings.SCHEDULER_RUN_DIR)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def run_record(claim_token: uuid.UUID, pid: int) -> None:
    """Note the process group a run started (pid and start time, so a reused pid is not mistaken for it)."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return  # it is gone already
    try:
        (run_dir() / run_key(claim_token)).write_text(f"{pid} {started!r}\n")
    except OSError:
        logger.warning("cannot record the process group %s of a run in %s", pid, settings.SCHEDULER_RUN_DIR)


def run_forget(claim_token: uuid.UUID) -> None:
    """The run's process group was killed and reaped by its executor: nothing to remember."""
    with contextlib.suppress(OSError):
        (Path(settings.SCHEDULER_RUN_DIR) / run_key(claim_token)).unlink()


def _recorded_leader(path: Path) -> psutil.Process | None:
    try:
        pid_text, started_text = path.read_text().split()
        leader = psutil.Process(int(pid_text))
        if abs(leader.create_time() - float(started_text)) < 0.01:
            return leader
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _carriers(key: str) -> list[psutil.Process]:
    """The processes whose environment carries the run key (of this user; of any user, as root, since jobs
    then run as SCHEDULER_SHELL_USER)."""
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            uids = proc.info["uids"]
            if uids is None or (uid != 0 and uids.real != uid) or proc.pid == os.getpid():
                continue
            if proc.environ().get(RUN_KEY_ENV) == key and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def leftovers_kill(claim_token: uuid.UUID | None) -> bool:
    """SIGKILL what the run with this claim left running on this host (processes and containers); True
    once nothing of it is left."""
    if claim_token is None:
        return True
    key = run_key(claim_token)
    containers_gone = run_containers_remove(key) if settings.SCHEDULER_CONTAINER_RUNTIME != "off" else True
    return _processes_kill(key) and containers_gone


def _processes_kill(key: str) -> bool:
    path = Path(settings.SCHEDULER_RUN_DIR) / key
    leader = _recorded_leader(path)
    if leader is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader.pid, signal.SIGKILL)
    for _ in range(KILL_ROUNDS):
        alive = _carriers(key)
        if not alive:
            with contextlib.suppress(OSError):
                path.unlink()
            if leader is not None:
                logger.warning("killed what a lost run left running (process group %s)", leader.pid)
            return True
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=2)
        time.sleep(0.05)
    logger.error("a lost run's processes survive SIGKILL: %s", [p.pid for p in _carriers(key)])
    return False
