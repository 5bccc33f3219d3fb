"""Executors run in this process (no worker): output, truncation, timeouts, cancellation, SSRF guard."""

from __future__ import annotations

import os
import sys
import threading
import time

import psutil
import pytest

from jobs.executors import http, python, shell
from jobs.executors.base import LocalControl
from jobs.executors.netguard import url_address_error


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_shell_captures_output_exit_code_and_progress():
    control = LocalControl()
    script = "print('PROGRESS 40'); import sys; print('oops', file=sys.stderr); sys.exit(3)"
    outcome = shell.run({"command": [sys.executable, "-c", script]}, timeout=30, control=control)
    assert outcome.status == "failed"
    assert outcome.exit_code == 3
    assert "oops" in outcome.output
    assert control.progress[-1] == 40.0


def test_shell_runs_argv_without_a_shell(tmp_path):
    outcome = shell.run({"command": ["echo", "$HOME; rm -rf /"], "cwd": str(tmp_path)}, timeout=30)
    assert outcome.status == "succeeded"
    assert outcome.output.strip() == "$HOME; rm -rf /"


def test_shell_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "do-not-leak")
    outcome = shell.run({"command": ["env"], "env": {"GREETING": "hi"}}, timeout=30, execution_id=7)
    assert "GREETING=hi" in outcome.output
    assert "SCHEDULER_EXECUTION_ID=7" in outcome.output
    assert "do-not-leak" not in outcome.output


def test_shell_output_is_bounded_to_the_tail(settings):
    settings.SCHEDULER_OUTPUT_LIMIT_BYTES = 1000
    script = "for i in range(5000): print(f'line {i}')"
    outcome = shell.run({"command": [sys.executable, "-c", script]}, timeout=30)
    assert outcome.output_truncated
    assert "line 4999" in outcome.output
    assert "line 0\n" not in outcome.output
    assert outcome.output.startswith("[output truncated")


def test_shell_timeout_kills_the_whole_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    # The child ignores SIGTERM: only the SIGKILL of the group gets it.
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    script = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', {stubborn!r}])\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(120)\n"
    )
    outcome = shell.run({"command": [sys.executable, "-c", script]}, timeout=2)
    assert outcome.status == "timed_out"
    assert "timed out" in outcome.error
    child = int(pidfile.read_text())
    assert _gone(child)


def test_shell_cancel_kills_a_running_command():
    control = LocalControl()
    threading.Timer(1.5, control.cancelled.set).start()
    outcome = shell.run({"command": ["sleep", "60"]}, timeout=60, control=control)
    assert outcome.status == "cancelled"


def test_shell_missing_program_fails_cleanly():
    outcome = shell.run({"command": ["/nonexistent/program"]}, timeout=5)
    assert outcome.status == "failed"
    assert "cannot start" in outcome.error


def test_python_handler_result_and_progress():
    control = LocalControl()
    outcome = python.run(
        {"handler": "progress", "kwargs": {"steps": 2, "delay": 0.01}}, timeout=30, control=control
    )
    assert outcome.status == "succeeded"
    assert outcome.result == {"steps": 2}
    assert control.progress == [50.0, 100.0]


def test_python_handler_failure_is_recorded():
    outcome = python.run({"handler": "fail", "kwargs": {"message": "boom"}}, timeout=30)
    assert outcome.status == "failed"
    assert outcome.error == "RuntimeError: boom"
    assert "Traceback" in outcome.output


def test_python_handler_is_interrupted_at_its_timeout():
    started = time.monotonic()
    outcome = python.run({"handler": "sleep", "kwargs": {"seconds": 60}}, timeout=1)
    assert outcome.status == "timed_out"
    assert time.monotonic() - started < 50  # interrupted, not slept out


def test_python_handler_cancel():
    control = LocalControl()
    threading.Timer(1.0, control.cancelled.set).start()
    outcome = python.run({"handler": "sleep", "kwargs": {"seconds": 60}}, timeout=60, control=control)
    assert outcome.status == "cancelled"


def test_python_unregistered_handler_is_a_validation_error():
    assert "payload.handler" in python.validate({"handler": "os.system"})
    assert python.validate({"handler": "echo", "kwargs": {"a": 1}}) == {}


# --- http ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://100.100.100.200/",
        "http://240.0.0.1/",
    ],
)
def test_forbidden_addresses_are_refused(url):
    assert url_address_error(url) is not None


def test_public_address_passes_and_allowlist_opens_a_private_one(settings):
    assert url_address_error("http://93.184.215.14/") is None
    settings.SCHEDULER_HTTP_ALLOWLIST = ["10.0.0.0/8", "internal.example"]
    assert url_address_error("http://10.1.2.3/") is None
    assert url_address_error("http://192.168.0.1/") is not None


def test_http_request_to_loopback_is_refused_unless_allowlisted(http_server, settings):
    outcome = http.run({"url": f"{http_server}/ok"}, timeout=10)
    assert outcome.status == "failed"
    assert "refused" in outcome.error
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1"]
    outcome = http.run({"url": f"{http_server}/ok"}, timeout=10)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.exit_code == 200
    assert outcome.output == "hello /ok"


def test_http_unexpected_status_fails_and_expected_passes(http_server, settings):
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1"]
    assert http.run({"url": f"{http_server}/fail"}, timeout=10).status == "failed"
    assert http.run({"url": f"{http_server}/fail", "expect_status": [500]}, timeout=10).status == "succeeded"


def test_http_redirect_to_a_forbidden_address_is_refused(http_server, settings):
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1"]
    outcome = http.run({"url": f"{http_server}/redirect?to=http://169.254.169.254/"}, timeout=10)
    assert outcome.status == "failed"
    assert "169.254.169.254" in outcome.error
    outcome = http.run({"url": f"{http_server}/redirect?to={http_server}/landed"}, timeout=10)
    assert outcome.status == "succeeded"
    assert outcome.output == "hello /landed"


def test_http_body_is_bounded(http_server, settings):
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1"]
    settings.SCHEDULER_OUTPUT_LIMIT_BYTES = 1000
    outcome = http.run({"url": f"{http_server}/big"}, timeout=10)
    assert outcome.output_truncated
    assert outcome.output.count("x") == 1000


def test_crash_handler_kills_its_process():
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child dies inside
        python.run({"handler": "crash"}, timeout=10)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
