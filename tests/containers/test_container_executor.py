"""The container executor on a real Docker Engine (a private dockerd): output, exit code, enforced limits,
why a run ended, and no container left behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.executors import LocalControl, Resources, container, payload_errors
from jobs.executors.docker_engine import LABEL_EXECUTION
from tests.docker_engine import SocketForwarder

pytestmark = pytest.mark.integration


def run(engine: Any, command: list[str], *, timeout: float = 60, control: Any = None, cpu: float = 0.5,
        memory_mb: int = 64, **payload: Any) -> Any:  # fmt: skip
    body = {"image": engine.image, "command": command, **payload}
    assert payload_errors("container", body) == {}
    return container.run(body, timeout=timeout, control=control, execution_id=4242,
                         resources=Resources(cpu=cpu, memory_mb=memory_mb))  # fmt: skip


def ours(engine: Any) -> list[Any]:
    """The containers of runs on the engine (labelled by the executor), running or not."""
    client = engine.client()
    try:
        return list(client.containers.list(all=True, filters={"label": [LABEL_EXECUTION]}))
    finally:
        client.close()


def test_output_and_exit_code_and_no_container_left(docker_host: Any) -> None:
    outcome = run(docker_host, ["sh", "-c", "echo hello from a container; echo to stderr >&2; exit 3"])
    assert outcome.status == "failed"
    assert outcome.exit_code == 3
    assert outcome.cause == "exited"
    assert "hello from a container" in outcome.output
    assert "to stderr" in outcome.output
    assert outcome.error == "exited with code 3"
    assert ours(docker_host) == []
    ok = run(docker_host, ["sh", "-c", "echo $GREETING in $(pwd) as $(id -u)"], env={"GREETING": "hi"},
             workdir="/tmp", user="65534")  # fmt: skip
    assert ok.status == "succeeded", ok
    assert ok.output.strip() == "hi in /tmp as 65534"


def test_memory_hog_is_oom_killed_and_reported_as_such(docker_host: Any) -> None:
    # dd allocates (and fills) a 200 MB buffer: far over the 64 MB limit, with no swap beyond it.
    outcome = run(docker_host, ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"], memory_mb=64)
    assert outcome.status == "failed"
    assert outcome.exit_code == 137
    assert outcome.cause == "oom_killed"
    assert outcome.error == "killed: out of memory (limit 64 MB)"
    assert ours(docker_host) == []


def test_a_job_under_its_memory_limit_succeeds_and_its_peak_is_recorded(docker_host: Any) -> None:
    # 50 MB held for two seconds (dd blocks writing into a pipe nobody reads) under a 128 MB limit.
    outcome = run(
        docker_host, ["sh", "-c", "dd if=/dev/zero bs=50M count=1 2>/dev/null | sleep 2"], memory_mb=128
    )
    assert outcome.status == "succeeded", outcome
    assert outcome.cause == "exited"
    assert outcome.memory_peak_bytes is not None
    assert 40 * 2**20 <= outcome.memory_peak_bytes <= 128 * 2**20


def test_a_cpu_hog_is_held_to_its_cpu(docker_host: Any) -> None:
    # Two busy loops could use two cores; the job asked for half of one.
    hog = "(while :; do :; done) & (while :; do :; done) & sleep 4; kill %1 %2"
    started = time.monotonic()
    outcome = run(docker_host, ["sh", "-c", hog], cpu=0.5)
    wall = time.monotonic() - started
    assert outcome.status == "succeeded", outcome
    assert outcome.cpu_seconds is not None
    ratio = outcome.cpu_seconds / wall
    assert 0.2 < ratio < 0.8, f"{outcome.cpu_seconds}s of CPU in {wall:.1f}s: not held to 0.5 cpu"


def test_pids_limit(docker_host: Any, settings: Any) -> None:
    settings.SCHEDULER_CONTAINER_PIDS_LIMIT = 8
    outcome = run(docker_host, ["sh", "-c", "for i in $(seq 20); do sleep 5 & done; wait"])
    assert outcome.status == "failed"
    assert "can't fork" in outcome.output


def test_network_none_by_default(docker_host: Any) -> None:
    outcome = run(docker_host, ["cat", "/proc/net/dev"])
    assert outcome.status == "succeeded", outcome
    interfaces = [line.split(":")[0].strip() for line in outcome.output.splitlines() if ":" in line]
    assert interfaces == ["lo"]


def test_timeout_stops_and_removes_the_container(docker_host: Any) -> None:
    started = time.monotonic()
    outcome = run(docker_host, ["sleep", "300"], timeout=2)
    assert outcome.status == "timed_out"
    assert outcome.cause == "timed_out"
    assert "timed out after 2s" in outcome.error
    assert time.monotonic() - started < 60
    assert ours(docker_host) == []


def test_cancel_stops_and_removes_the_container(docker_host: Any) -> None:
    control = LocalControl()
    seen: dict[str, Any] = {}

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen.get("running"):
            seen["running"] = [c for c in ours(docker_host) if c.status == "running"]
            time.sleep(0.1)
        control.cancelled.set()

    threading.Thread(target=cancel_once_running, daemon=True).start()
    outcome = run(docker_host, ["sleep", "300"], control=control)
    assert seen.get("running"), "the container never ran"
    assert outcome.status == "cancelled"
    assert outcome.cause == "cancelled"
    assert ours(docker_host) == []


def test_missing_image_with_pull_never_fails_clearly(docker_host: Any) -> None:
    body = {"image": "scheduler-test/not-here:1", "command": ["true"], "pull": "never"}
    outcome = container.run(body, timeout=10, resources=Resources(cpu=0.1, memory_mb=64))
    assert outcome.status == "failed"
    assert outcome.cause == "start_failed"
    assert outcome.error == "image 'scheduler-test/not-here:1' is not on this node's engine (pull: never)"
    pulled = container.run({**body, "pull": "if-missing"}, timeout=30, resources=Resources())
    assert pulled.status == "failed"
    assert "cannot be pulled" in pulled.error  # no registry is reachable


def test_a_missing_program_is_a_start_failure(docker_host: Any) -> None:
    outcome = run(docker_host, ["/bin/not-a-program"])
    assert outcome.status == "failed"
    assert outcome.cause == "start_failed"
    assert "not-a-program" in outcome.error
    assert ours(docker_host) == []


def test_an_engine_failing_mid_run_fails_the_run_with_its_error(
    docker_engine: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    forwarder = SocketForwarder(tmp_path / "engine.sock", docker_engine.host.removeprefix("unix://"))
    forwarder.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{forwarder.path}")
    threading.Timer(2.0, forwarder.cut_all).start()
    started = time.monotonic()
    outcome = run(docker_engine, ["sleep", "300"])
    assert outcome.status == "failed"
    assert outcome.cause == "engine_error"
    assert outcome.error.startswith("container engine failed mid-run: ")
    assert time.monotonic() - started < 60
    # The container it could not remove is the janitor's (tests/containers/test_container_jobs.py); here:
    for leftover in ours(docker_engine):
        leftover.remove(force=True)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"image": "Busy Box!", "command": ["true"]}, "payload.image"),
        ({"image": "", "command": ["true"]}, "payload.image"),
        ({"image": "busybox", "command": "echo hi"}, "payload.command"),
        ({"image": "busybox", "command": []}, "payload.command"),
        ({"image": "busybox", "network": "host"}, "payload.network"),
        ({"image": "busybox", "pull": "always"}, "payload.pull"),
        ({"image": "busybox", "user": "a b"}, "payload.user"),
        ({"image": "busybox", "workdir": "relative"}, "payload.workdir"),
        ({"image": "busybox", "env": {"1BAD": "x"}}, "payload.env"),
        ({"image": "busybox", "env": {"BIG": "x" * 40000}}, "payload.env"),
        ({"image": "busybox", "env": {f"V{i}": "x" for i in range(200)}}, "payload.env"),
        ({"image": "busybox", "volumes": ["/:/host"]}, "payload"),
        ({"image": "busybox", "privileged": True}, "payload"),
    ],
)
def test_bad_payloads_name_the_field(payload: dict[str, Any], field: str) -> None:
    errors = payload_errors("container", payload)
    assert field in errors, errors


@pytest.mark.parametrize(
    "image",
    ["busybox", "busybox:1.36", "library/busybox:latest", "registry.example.com:5000/team/app:v1.2-rc",
     "ghcr.io/org/app@sha256:" + "a" * 64, "localhost/x_y__z-w"],
)  # fmt: skip
def test_good_image_references(image: str) -> None:
    assert payload_errors("container", {"image": image}) == {}


def test_shell_jobs_sandboxed_in_a_container(docker_host: Any, settings: Any, monkeypatch: Any) -> None:
    from jobs.executors import shell

    settings.SCHEDULER_SHELL_SANDBOX = "container"
    settings.SCHEDULER_SHELL_SANDBOX_IMAGE = docker_host.image
    monkeypatch.setenv("WORKER_SECRET", "s3cr3t-of-the-worker")
    outcome = shell.run(
        {"command": ["sh", "-c", "echo pid $$; env; cat /proc/net/dev"], "env": {"MINE": "yes"}},
        timeout=30,
        execution_id=7,
        resources=Resources(cpu=0.5, memory_mb=64),
    )
    assert outcome.status == "succeeded", outcome
    assert "pid 1\n" in outcome.output  # the command is the container's first process
    assert "MINE=yes" in outcome.output
    assert "SCHEDULER_EXECUTION_ID=7" in outcome.output
    assert "s3cr3t-of-the-worker" not in outcome.output  # nothing of the worker's environment
    assert "DATABASE_URL" not in outcome.output
    assert "eth0" not in outcome.output  # no network but loopback
    hog = shell.run({"command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]}, timeout=30,
                    resources=Resources(cpu=0.5, memory_mb=64))  # fmt: skip
    assert hog.cause == "oom_killed"  # the job's limits apply to a sandboxed shell job too
    assert ours(docker_host) == []


def test_output_is_streamed_while_the_container_runs(docker_host: Any) -> None:
    control = LocalControl()
    streamed: list[bytes] = []
    control.log_feed = streamed.append  # type: ignore[attr-defined]  # a worker's control has it
    script = "for i in 1 2 3 4; do echo line $i; sleep 1; done"
    outcome = run(docker_host, ["sh", "-c", script], control=control)
    assert outcome.status == "succeeded"
    assert outcome.output.split() == ["line", "1", "line", "2", "line", "3", "line", "4"]
    # The tail was stored while it ran, before the last line was printed.
    assert any("line 1" in text and "line 4" not in text for text in control.outputs), control.outputs
    assert b"".join(streamed).decode().count("line") == 4


def test_only_allowed_images_when_the_installation_lists_them(docker_host: Any, settings: Any) -> None:
    settings.SCHEDULER_CONTAINER_IMAGES = ["registry.example.com/*", "scheduler-test/*"]
    assert payload_errors("container", {"image": "scheduler-test/busybox:1"}) == {}
    errors = payload_errors("container", {"image": "evil.example.org/miner:latest"})
    assert "SCHEDULER_CONTAINER_IMAGES" in errors["payload.image"]
    # A job accepted before the list changed is refused when it runs.
    settings.SCHEDULER_CONTAINER_IMAGES = ["registry.example.com/*"]
    outcome = container.run(
        {"image": docker_host.image, "command": ["true"]}, timeout=10, resources=Resources()
    )
    assert outcome.status == "failed"
    assert outcome.cause == "start_failed"
    assert "SCHEDULER_CONTAINER_IMAGES" in outcome.error
    assert ours(docker_host) == []
