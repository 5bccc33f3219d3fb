"""The `shell` executor: an argv list run with no shell, in its own process group, killed at the timeout.

When the worker runs as root, the job runs as SCHEDULER_SHELL_USER (default `nobody`), with no
supplementary groups, umask 077 and at most SCHEDULER_SHELL_MAX_PROCESSES processes of that user: it
cannot read the worker's environment (/proc/<pid>/environ is its owner's only) nor the files under var/.
Every run gets a fresh empty working directory (also its HOME and TMPDIR), removed afterwards, unless the
payload names a `cwd`.

With SCHEDULER_SHELL_SANDBOX=container the command runs instead in a container of
SCHEDULER_SHELL_SANDBOX_IMAGE (the `container` executor: the job's cpu and memory enforced, no network,
nothing of the worker's host visible), on nodes labelled runtime=docker only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings

from . import container
from .base import (
    LocalControl,
    Outcome,
    OutputTail,
    Resources,
    RunControl,
    clamp_progress,
    payload_envelope_errors,
)

POLL_SECONDS = 1.0  # how often cancellation is checked and the output tail stored
KILL_GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL of the process group
PAYLOAD_KEYS = {"command", "env", "cwd"}
# The worker's own environment (database URL, secret key) is never passed to jobs: only these.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
PROGRESS_LINE = re.compile(rb"^PROGRESS\s+(\d+(?:\.\d+)?)\s*$")


def validate(payload: Any) -> dict[str, str]:
    """Errors in a shell payload, keyed by field (empty when valid)."""
    errors = payload_envelope_errors(payload, PAYLOAD_KEYS, "a 'command' list")
    if not isinstance(payload, dict):
        return errors
    command = payload.get("command")
    if not isinstance(command, list) or not command:
        errors["payload.command"] = "must be a non-empty list of strings (argv, run with no shell)"
    elif not all(isinstance(arg, str) for arg in command) or not command[0]:
        errors["payload.command"] = "every argument must be a string and the program must not be empty"
    elif any("\x00" in arg for arg in command):
        errors["payload.command"] = "arguments must not contain NUL bytes"
    env = payload.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        errors["payload.env"] = "must be an object of string names to string values"
    cwd = payload.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isabs(cwd)):
        errors["payload.cwd"] = "must be an absolute path"
    return errors


def sandboxed(payload: dict[str, Any]) -> dict[str, Any]:
    """The container payload a sandboxed shell job runs as."""
    boxed: dict[str, Any] = {
        "image": settings.SCHEDULER_SHELL_SANDBOX_IMAGE,
        "command": payload["command"],
        "env": payload.get("env", {}),
        "network": "none",
    }
    if payload.get("cwd"):
        boxed["workdir"] = payload["cwd"]
    return boxed


def job_environment(payload_env: dict[str, str], execution_id: int | None) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update(payload_env)
    if execution_id is not None:
        env["SCHEDULER_EXECUTION_ID"] = str(execution_id)
    return env


@dataclass(frozen=True)
class JobUser:
    """Who a shell job runs as when it is not the worker's own user."""

    name: str
    uid: int
    gid: int


def job_user() -> JobUser | None:
    """SCHEDULER_SHELL_USER when the worker runs as root; None: the job runs as the worker's user."""
    name = settings.SCHEDULER_SHELL_USER
    if not name or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"SCHEDULER_SHELL_USER {name!r} is not a user on this host") from None
    return JobUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _limits(max_processes: int) -> Any:
    def apply() -> None:  # runs in the child, after it became the job's user
        if max_processes > 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))

    return apply


def _workdir(user: JobUser | None) -> str:
    path = tempfile.mkdtemp(prefix="scheduler-job-")
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path


class _Pump(threading.Thread):
    """Copies the child's output into the tail and notes the last PROGRESS line."""

    def __init__(self, stream: IO[bytes], tail: OutputTail) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.tail = tail
        self.progress: float | None = None
        self._partial = b""

    def run(self) -> None:
        fd = self.stream.fileno()
        while chunk := os.read(fd, 65536):
            self.tail.write(chunk)
            self._scan(chunk)
        self.stream.close()

    def _scan(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()[-256:]  # a PROGRESS line is short; keep the partial bounded
        for line in lines:
            match = PROGRESS_LINE.match(line.rstrip(b"\r"))
            if match:
                self.progress = clamp_progress(float(match.group(1)))


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Children may ignore SIGTERM or outlive the leader; the group dies with the job either way.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(
    payload: dict[str, Any],
    *,
    timeout: float,
    control: RunControl | None = None,
    execution_id: int | None = None,
    resources: Resources | None = None,
) -> Outcome:
    """Run the command; return its outcome (exit code, bounded output, timed_out / cancelled)."""
    control = control or LocalControl()
    if settings.SCHEDULER_SHELL_SANDBOX == "container":
        return container.run(
            sandboxed(payload),
            timeout=timeout,
            control=control,
            execution_id=execution_id,
            resources=resources,
        )
    tail = OutputTail(sink=getattr(control, "log_feed", None))
    # A worker's control marks the job's processes (environment) and records their group, so that what a
    # run leaves behind when its worker dies is found and killed (worker.processes).
    env = job_environment(payload.get("env", {}), execution_id)
    env.update(getattr(control, "process_env", dict)())
    try:
        user = job_user()
    except ValueError as exc:
        return Outcome(status="failed", error=str(exc))
    workdir = None if payload.get("cwd") else _workdir(user)
    if workdir is not None:
        env.update(HOME=workdir, TMPDIR=workdir)
    try:
        return _run(payload, env, user, workdir, timeout=timeout, control=control, tail=tail)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(
    payload: dict[str, Any],
    env: dict[str, str],
    user: JobUser | None,
    workdir: str | None,
    *,
    timeout: float,
    control: RunControl,
    tail: OutputTail,
) -> Outcome:
    as_user: dict[str, Any] = {}
    if user is not None:
        as_user = {
            "user": user.uid,
            "group": user.gid,
            "extra_groups": [],
            "umask": 0o077,
            "preexec_fn": _limits(settings.SCHEDULER_SHELL_MAX_PROCESSES),
        }
    try:
        proc = subprocess.Popen(
            payload["command"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=payload.get("cwd") or workdir,
            env=env,
            start_new_session=True,  # its own process group, so the whole tree can be killed
            close_fds=True,
            **as_user,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Outcome(
            status="failed", error=f"cannot start {payload['command'][0]!r}: {exc}", cause="start_failed"
        )
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
    started, ended = getattr(control, "process_started", None), getattr(control, "process_ended", None)
    if started is not None:
        started(proc.pid)
    pump = _Pump(proc.stdout, tail)
    pump.start()
    stop: str | None = "cancelled"  # if supervising raises, the group is killed all the same
    try:
        stop = _supervise(proc, pump, tail, control, timeout)
    finally:
        # However supervision ends (an exception included), the job's process group does not outlive it.
        kill_group(proc, grace=KILL_GRACE_SECONDS if stop else 0)
        if ended is not None:
            ended()
    pump.join(timeout=5)
    if pump.progress is not None:
        control.progress_update(pump.progress)
    outcome = Outcome(
        status="succeeded" if proc.returncode == 0 else "failed",
        exit_code=proc.returncode,
        output=tail.text(),
        output_truncated=tail.truncated,
    )
    outcome.cause = "exited"
    if stop == "timed_out":
        outcome.status, outcome.error = "timed_out", f"timed out after {timeout:g}s; process group killed"
        outcome.cause = "timed_out"
    elif stop:
        outcome.status, outcome.error = "cancelled", f"{stop}; process group killed"
        outcome.cause = "cancelled"
    elif proc.returncode:
        outcome.error = f"exited with code {proc.returncode}"
    return outcome


def _supervise(
    proc: subprocess.Popen[bytes], pump: _Pump, tail: OutputTail, control: RunControl, timeout: float
) -> str | None:
    """Wait for the process; return "timed_out" or the control's stop reason if it must be killed."""
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + POLL_SECONDS
    stored_version, stored_progress = 0, None
    while proc.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            return "timed_out"
        if now >= next_tick:
            next_tick = now + POLL_SECONDS
            reason = control.stop_reason()
            if reason:
                return reason
            if tail.version != stored_version:
                stored_version = tail.version
                control.output_update(tail.text(), tail.truncated)
            if pump.progress is not None and pump.progress != stored_progress:
                stored_progress = pump.progress
                control.progress_update(pump.progress)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=min(0.2, max(deadline - now, 0.01)))
    return None
