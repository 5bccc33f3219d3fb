"""The `container` executor: a command in a container of the node's Docker Engine, with the job's limits.

What placement reserved is what the kernel enforces: the job's `cpu` becomes the container's CPU quota
(nano_cpus), its `memory_mb` the memory limit with no swap beyond it (mem_limit = memswap_limit), and
SCHEDULER_CONTAINER_PIDS_LIMIT bounds its processes. The network is `none` unless the payload asks for
`bridge`; the container gets no mounts, no privileges (no-new-privileges) and none of the worker's
environment. Output is streamed into the execution's log while it runs (bounded like every kind's); the
timeout and a cancel stop it (SIGTERM, SIGKILL after a grace) and every run ends with its container
removed. Why it ended is told apart: the kernel's out-of-memory kill (`oom_killed`, with the limit in
the error), the timeout, a cancel, the engine failing mid-run (`engine_error`), or the command's own exit.
CPU seconds and peak memory are sampled from the engine while it runs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .base import LocalControl, Outcome, OutputTail, Resources, RunControl, payload_envelope_errors
from .docker_engine import (
    ENGINE_ERRORS,
    LABEL_EXECUTION,
    engine_client,
    engine_error_text,
)

logger = logging.getLogger(__name__)
PAYLOAD_KEYS = {"image", "command", "env", "workdir", "network", "pull", "user"}
NETWORKS = ("none", "bridge")
PULLS = ("never", "if-missing")
STOP_GRACE_SECONDS = 3  # between SIGTERM and SIGKILL when a run is stopped
SAMPLE_SECONDS = 0.5  # CPU and memory samples from the engine, at most this often
OUTPUT_SECONDS = 1.0  # the output tail stored at most this often
ENGINE_GRACE_SECONDS = 5.0  # an engine that stays unreachable this long mid-run fails the run
ENV_MAX_ITEMS = 128
ENV_MAX_BYTES = 32 * 1024
MIN_MEMORY_MB = 6  # the engine refuses a smaller memory limit

# The image reference grammar of the distribution project (docker/distribution reference/regexp.go):
# [domain[:port]/]path-component(/path-component)*[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)"
IMAGE_REFERENCE = re.compile(
    rf"^(?P<name>{_DOMAIN}?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")


def _image_error(image: Any) -> str | None:
    if not isinstance(image, str) or not image:
        return "must be an image reference, e.g. 'busybox:1.36' or 'registry.example.com:5000/team/app:v1'"
    match = IMAGE_REFERENCE.match(image)
    if match is None or len(match.group("name")) > 255:
        return (
            f"{image[:100]!r} is not an image reference: [registry[:port]/]name[:tag][@digest], the name in"
            " lower case (e.g. 'busybox:1.36')"
        )
    return image_allowed_error(image)


def image_allowed_error(image: str) -> str | None:
    """Why this installation does not run `image` (SCHEDULER_CONTAINER_IMAGES patterns), or None."""
    patterns = settings.SCHEDULER_CONTAINER_IMAGES
    if patterns and not any(fnmatch.fnmatchcase(image, pattern) for pattern in patterns):
        allowed = ", ".join(patterns)
        return f"{image[:100]!r} is not allowed here (SCHEDULER_CONTAINER_IMAGES: {allowed})"
    return None


def _env_error(env: Any) -> str | None:
    if not isinstance(env, dict):
        return "must be an object of variable names to string values"
    if len(env) > ENV_MAX_ITEMS:
        return f"at most {ENV_MAX_ITEMS} variables (has {len(env)})"
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            return f"{str(name)[:60]!r} is not a variable name (letters, digits, _ . -; no leading digit)"
        if not isinstance(value, str) or "\x00" in value:
            return f"the value of {name} must be a string with no NUL bytes"
    size = sum(len(name.encode()) + len(value.encode()) + 2 for name, value in env.items())
    if size > ENV_MAX_BYTES:
        return f"at most {ENV_MAX_BYTES} bytes of names and values in all (has {size})"
    return None


def validate(payload: Any) -> dict[str, str]:
    """Errors in a container payload, keyed by field (empty when valid)."""
    errors = payload_envelope_errors(payload, PAYLOAD_KEYS, "an 'image' and a 'command' list")
    if not isinstance(payload, dict):
        return errors
    if (problem := _image_error(payload.get("image"))) is not None:
        errors["payload.image"] = problem
    command = payload.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) and "\x00" not in arg for arg in command)
        or not command[0]
    ):
        errors["payload.command"] = (
            "must be a non-empty list of strings (argv, no shell); omit it for the image's own command"
        )
    if (problem := _env_error(payload.get("env", {}))) is not None:
        errors["payload.env"] = problem
    workdir = payload.get("workdir")
    if workdir is not None and (
        not isinstance(workdir, str)
        or not workdir.startswith("/")
        or "\x00" in workdir
        or len(workdir) > 4096
    ):
        errors["payload.workdir"] = "must be an absolute path inside the container"
    if payload.get("network", "none") not in NETWORKS:
        errors["payload.network"] = f"must be one of {', '.join(NETWORKS)} (default none: no network at all)"
    if payload.get("pull", "if-missing") not in PULLS:
        errors["payload.pull"] = f"must be one of {', '.join(PULLS)} (default if-missing)"
    user = payload.get("user")
    if user is not None and (not isinstance(user, str) or not USER.match(user)):
        errors["payload.user"] = (
            "must be a user or uid, optionally :group or :gid (e.g. 'nobody' or '1000:1000')"
        )
    return errors


def resources_error(resources: Resources) -> str | None:
    """Why the engine could not apply these limits, or None."""
    if 0 < resources.memory_mb < MIN_MEMORY_MB:
        return f"must be 0 (no limit) or at least {MIN_MEMORY_MB} for a container job (the engine's minimum)"
    return None


@dataclass
class _Usage:
    """CPU and memory of the running container, as sampled from the engine."""

    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None

    def add(self, stats: dict[str, Any]) -> None:
        cpu = (stats.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage")
        if cpu:  # nanoseconds; an exited container reports 0
            self.cpu_seconds = max(self.cpu_seconds or 0.0, cpu / 1e9)
        memory = stats.get("memory_stats") or {}
        peak = memory.get("max_usage") or memory.get("usage")  # cgroup v1 keeps the peak; v2 only now
        if peak:
            self.memory_peak_bytes = max(self.memory_peak_bytes or 0, int(peak))


class _LogPump(threading.Thread):
    """Follows the container's output (stdout and stderr) into the tail until the container ends."""

    def __init__(self, client: Any, container_id: str, tail: OutputTail) -> None:
        super().__init__(daemon=True, name="container-logs")
        self.client, self.container_id, self.tail = client, container_id, tail
        self.failed: str | None = None

    def run(self) -> None:
        try:
            for chunk in self.client.api.logs(self.container_id, stream=True, follow=True):
                self.tail.write(chunk)
        except ENGINE_ERRORS as exc:
            self.failed = engine_error_text(exc)


def _environment(payload_env: dict[str, str], execution_id: int | None) -> dict[str, str]:
    env = dict(payload_env)
    if execution_id is not None:
        env["SCHEDULER_EXECUTION_ID"] = str(execution_id)
    return env


def _image_ready(client: Any, image: str, pull: str) -> str | None:
    """Make sure the image is on the engine; None, or why the run cannot start."""
    import docker.errors

    try:
        client.images.get(image)
        return None
    except docker.errors.ImageNotFound:
        if pull == "never":
            return f"image {image!r} is not on this node's engine (pull: never)"
    try:
        match = IMAGE_REFERENCE.match(image)
        name = match.group("name") if match else image
        tag = (match.group("digest") or match.group("tag")) if match else None
        client.images.pull(name, tag=tag or "latest")
        return None
    except ENGINE_ERRORS as exc:
        return f"image {image!r} is not on this node's engine and cannot be pulled: {engine_error_text(exc)}"


def run(
    payload: dict[str, Any],
    *,
    timeout: float,
    control: RunControl | None = None,
    execution_id: int | None = None,
    resources: Resources | None = None,
    **_: Any,
) -> Outcome:
    """Run the container; return its outcome (exit code, bounded output, why it ended, what it used)."""
    control = control or LocalControl()
    resources = resources or Resources()
    if (problem := resources_error(resources)) is not None:
        return Outcome(status="failed", error=f"memory_mb {problem}", cause="start_failed")
    try:
        client = engine_client()
        client.ping()
    except ENGINE_ERRORS as exc:
        return Outcome(
            status="failed",
            error=f"container engine unreachable: {engine_error_text(exc)}",
            cause="engine_error",
        )
    try:
        return _run(client, payload, timeout=timeout, control=control, execution_id=execution_id,
                    resources=resources)  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _create(
    client: Any,
    payload: dict[str, Any],
    execution_id: int | None,
    resources: Resources,
    labels: dict[str, str],
) -> Any:
    limits: dict[str, Any] = {}
    if resources.cpu and float(resources.cpu) > 0:
        limits["nano_cpus"] = int(float(resources.cpu) * 1_000_000_000)
    if resources.memory_mb:
        limits["mem_limit"] = limits["memswap_limit"] = f"{int(resources.memory_mb)}m"
    if settings.SCHEDULER_CONTAINER_PIDS_LIMIT:
        limits["pids_limit"] = settings.SCHEDULER_CONTAINER_PIDS_LIMIT
    optional = {
        "command": payload.get("command"),
        "working_dir": payload.get("workdir"),
        "user": payload.get("user"),
    }
    return client.containers.create(
        payload["image"],
        environment=_environment(payload.get("env", {}), execution_id),
        network_mode=payload.get("network", "none"),
        labels=labels,
        security_opt=["no-new-privileges"],
        stdin_open=False,
        tty=False,
        detach=True,
        **{key: value for key, value in optional.items() if value is not None},
        **limits,
    )


def _run(
    client: Any,
    payload: dict[str, Any],
    *,
    timeout: float,
    control: RunControl,
    execution_id: int | None,
    resources: Resources,
) -> Outcome:
    # Checked again when it runs: the allowed images may have changed since the job was submitted.
    problem = image_allowed_error(payload["image"]) or _image_ready(
        client, payload["image"], payload.get("pull", "if-missing")
    )
    if problem is not None:
        return Outcome(status="failed", error=problem, cause="start_failed")
    labels = {LABEL_EXECUTION: str(execution_id or 0), **getattr(control, "container_labels", dict)()}
    tail = OutputTail(sink=getattr(control, "log_feed", None))
    try:
        container = _create(client, payload, execution_id, resources, labels)
    except ENGINE_ERRORS as exc:
        return Outcome(status="failed", error=f"cannot create the container: {engine_error_text(exc)}",
                       cause="start_failed")  # fmt: skip
    usage = _Usage()
    try:
        try:
            container.start()
        except ENGINE_ERRORS as exc:
            return Outcome(status="failed", error=f"cannot start the container: {engine_error_text(exc)}",
                           cause="start_failed")  # fmt: skip
        pump = _LogPump(client, container.id, tail)
        pump.start()
        stop, state, engine_failure = _supervise(client, container, tail, control, timeout, usage)
        if stop:
            with contextlib.suppress(*ENGINE_ERRORS):
                client.api.stop(container.id, timeout=STOP_GRACE_SECONDS)
        pump.join(timeout=5)
    finally:
        # Every run ends with its container gone (killed first if still running); the janitor removes one
        # this cannot (the engine went away).
        with contextlib.suppress(*ENGINE_ERRORS):
            container.remove(force=True)
    return _outcome(stop, state, engine_failure, tail, usage, timeout, resources)


def _supervise(
    client: Any, container: Any, tail: OutputTail, control: RunControl, timeout: float, usage: _Usage
) -> tuple[str | None, dict[str, Any], str | None]:
    """Wait for the container to end: (why it must be stopped or None, its last State, engine failure)."""
    start = time.monotonic()
    deadline = start + timeout
    next_sample = next_output = start
    failing_since: float | None = None
    stored_version = 0
    state: dict[str, Any] = {}
    while True:
        now = time.monotonic()
        try:
            state = client.api.inspect_container(container.id)["State"]
            if now >= next_sample and state.get("Running"):
                next_sample = now + SAMPLE_SECONDS
                usage.add(client.api.stats(container.id, stream=False, one_shot=True))
            failing_since = None
        except ENGINE_ERRORS as exc:
            failing_since = failing_since or now
            if now - failing_since >= ENGINE_GRACE_SECONDS:
                return None, state, engine_error_text(exc)
        if failing_since is None and not state.get("Running") and state.get("Status") in ("exited", "dead"):
            return None, state, None
        if now >= deadline:
            return "timed_out", state, None
        reason = control.stop_reason()
        if reason:
            return reason, state, None
        if now >= next_output and tail.version != stored_version:
            next_output, stored_version = now + OUTPUT_SECONDS, tail.version
            control.output_update(tail.text(), tail.truncated)
        # Poll fast at first (a short container ends in a fraction of a second), then every quarter second.
        time.sleep(min(0.05 + (now - start) / 4, 0.25, max(deadline - now, 0.01)))


def _outcome(
    stop: str | None,
    state: dict[str, Any],
    engine_failure: str | None,
    tail: OutputTail,
    usage: _Usage,
    timeout: float,
    resources: Resources,
) -> Outcome:
    exit_code = state.get("ExitCode") if not state.get("Running") else None
    outcome = Outcome(
        status="failed",
        exit_code=exit_code,
        output=tail.text(),
        output_truncated=tail.truncated,
        memory_peak_bytes=usage.memory_peak_bytes,
        cpu_seconds=None if usage.cpu_seconds is None else round(usage.cpu_seconds, 3),
    )
    if engine_failure is not None:
        outcome.error, outcome.cause = f"container engine failed mid-run: {engine_failure}", "engine_error"
    elif stop == "timed_out":
        outcome.status, outcome.cause = "timed_out", "timed_out"
        outcome.error = f"timed out after {timeout:g}s; container stopped and removed"
    elif stop:
        outcome.status, outcome.cause = "cancelled", "cancelled"
        outcome.error = f"{stop}; container stopped and removed"
    elif state.get("OOMKilled") and exit_code != 0:
        outcome.cause = "oom_killed"
        outcome.error = f"killed: out of memory (limit {resources.memory_mb} MB)"
    else:
        outcome.cause = "exited"
        if exit_code == 0:
            outcome.status = "succeeded"
            if state.get("OOMKilled"):  # a child was killed, the command itself carried on and succeeded
                outcome.error = (
                    f"a process of the run was killed: out of memory (limit {resources.memory_mb} MB)"
                )
        else:
            outcome.error = f"exited with code {exit_code}" + (
                f": {state['Error']}" if state.get("Error") else ""
            )
    return outcome
