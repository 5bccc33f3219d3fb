"""Run the Procfile's processes under supervisord for `make up`: a process that dies is started again.

    python -m scheduler_project.supervise config   # writes var/supervisord.conf from the Procfile; its path
    python -m scheduler_project.supervise listen   # supervisord's event listener: "name | line" output

The Procfile stays the one list of process commands (docker-compose.yml runs the same ones). supervisord
runs in the foreground: SIGINT (Ctrl-C) or SIGTERM stops every program in order (flower, web, beat, then the
worker with a warm shutdown), and it exits. Each program gets its stop signal on its main process only —
SIGTERM to a Celery pool process would abort the task it runs — and SIGKILL on its whole process group once
its stop wait is over. Program output goes to supervisord as PROCESS_LOG events; the `listen` program
prefixes every line with the program's name and writes it to supervisord's stdout, i.e. the terminal.
This module imports nothing from Django (it runs before settings can load, and inside supervisord).
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

ROOT = Path(__file__).resolve().parent.parent
VAR = (ROOT / os.environ.get("SCHEDULER_VAR_DIR", "var")).resolve()

# Start order (low first); supervisord stops in the reverse order, so the worker stops after web and beat.
PRIORITY = {"worker": 10, "beat": 20, "web": 30, "flower": 40}
# Seconds between the stop signal and SIGKILL: the worker's warm shutdown finishes the tasks it runs (one
# still running after this is recovered as lost and retried); gunicorn's graceful_timeout is 20 s.
STOP_WAIT = {"worker": 30, "web": 25}
DEFAULT_STOP_WAIT = 10
# A program that exits sooner than this after starting failed to start; supervisord retries it with a
# growing back-off (1 s, 2 s, ...) this many times, i.e. for a few minutes (e.g. while PostgreSQL restarts).
START_SECONDS = 2
START_RETRIES = 20


def procfile(path: Path) -> dict[str, str]:
    """The Procfile's processes: name -> shell command, in file order."""
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip().isidentifier() or not command.strip():
            raise SystemExit(f"supervise: {path}:{number}: expected `name: command`, got {line!r}")
        processes[name.strip()] = command.strip()
    if not processes:
        raise SystemExit(f"supervise: {path} names no process")
    return processes


def _value(text: str) -> str:
    # supervisord expands %(name)s in its values: a literal % (celery's `%h`) must be doubled.
    return text.replace("%", "%%")


def config_text(processes: dict[str, str], var: Path, root: Path = ROOT) -> str:
    """supervisord.conf for these processes, with its socket, pid file and log under var."""
    python = shlex.quote(sys.executable)
    # supervisorctl's password, new on every run; only this file (mode 600) and supervisorctl -c know it.
    password = secrets.token_urlsafe(16)
    sections = [
        "; Written by `make up` (scheduler_project/supervise.py) from the Procfile on every run; edit those.",
        "[supervisord]",
        "nodaemon=true",
        f"directory={_value(str(root))}",
        f"logfile={_value(str(var / 'supervisord.log'))}",
        "logfile_maxbytes=5MB",
        "logfile_backups=2",
        f"pidfile={_value(str(var / 'supervisord.pid'))}",
        # As root, name it: supervisord otherwise warns that it did not drop privileges.
        *(["user=root"] if os.getuid() == 0 else []),
        "",
        "[unix_http_server]",
        f"file={_value(str(var / 'supervisor.sock'))}",
        "chmod=0700",
        "username=make-up",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_value(str(var / 'supervisor.sock'))}",
        "username=make-up",
        f"password={password}",
        "",
        "[eventlistener:output]",
        f"command={_value(python)} -m scheduler_project.supervise listen",
        "events=PROCESS_LOG",
        # Output bursts (a worker's start banner) queue here instead of being dropped.
        "buffer_size=10000",
        "priority=1",
        "autorestart=true",
        "stdout_logfile=NONE",
        "stderr_logfile=/dev/stdout",
        "stderr_logfile_maxbytes=0",
        "",
    ]
    for name, command in processes.items():
        sections += [
            f"[program:{name}]",
            # Run by the shell like honcho did (a Procfile line is a shell command); `exec` makes the
            # program itself supervisord's child, so the stop signal reaches it directly.
            f"command=/bin/sh -c {_value(shlex.quote('exec ' + command))}",
            f"priority={PRIORITY.get(name, 50)}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={START_SECONDS}",
            f"startretries={START_RETRIES}",
            "stopsignal=TERM",
            f"stopwaitsecs={STOP_WAIT.get(name, DEFAULT_STOP_WAIT)}",
            "stopasgroup=false",
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=NONE",
            "stdout_events_enabled=true",
            "",
        ]
    return "\n".join(sections)


def write_config(var: Path = VAR) -> Path:
    var.mkdir(parents=True, exist_ok=True)
    path = var / "supervisord.conf"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(config_text(procfile(ROOT / "Procfile"), var))
    return path


def listen(events: BinaryIO, answers: TextIO, out: TextIO, width: int = 6) -> None:
    """supervisord's event listener protocol: each PROCESS_LOG event's lines, name-prefixed, go to out."""
    partial: dict[str, bytes] = {}  # an event may end mid-line: the rest comes with the next one
    while True:
        answers.write("READY\n")
        answers.flush()
        header_line = events.readline()
        if not header_line:
            return  # supervisord closed the pipe: it is shutting down
        header = _tokens(header_line)
        head, _, data = events.read(int(header["len"])).partition(b"\n")
        name = _tokens(head).get("processname", "?")
        lines = (partial.pop(name, b"") + data).split(b"\n")
        if lines[-1]:
            partial[name] = lines[-1]
        for line in lines[:-1]:
            # Undecodable bytes must not stop the listener: they are shown, replaced.
            out.write(f"{name:<{width}} | {line.decode('utf-8', errors='replace')}\n")
        out.flush()
        answers.write("RESULT 2\nOK")
        answers.flush()


def _tokens(line: bytes) -> dict[str, str]:
    """`key:value key:value` (supervisord's event headers) as a dict."""
    return dict(token.split(":", 1) for token in line.decode("utf-8", errors="replace").split())


def main(argv: list[str]) -> int:
    if argv == ["config"]:
        print(write_config())
        return 0
    if argv == ["listen"]:
        # supervisord stops the listener last, with SIGTERM: that is a normal end.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        width = max(len(name) for name in procfile(ROOT / "Procfile"))
        listen(sys.stdin.buffer, sys.stdout, sys.stderr, width)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
