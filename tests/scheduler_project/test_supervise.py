"""`make up`'s supervisord configuration comes from the Procfile, and its output listener names every line."""

from __future__ import annotations

import io
import os
import sys

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from scheduler_project import flower
from scheduler_project.supervise import ROOT, config_text, listen, procfile


def test_config_runs_every_procfile_process_restarted_and_warm_stopped(tmp_path):
    processes = procfile(ROOT / "Procfile")
    path = tmp_path / "supervisord.conf"
    path.write_text(config_text(processes, tmp_path))
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    programs = {group.name: group.process_configs[0] for group in options.process_group_configs}
    assert set(programs) == {*processes, "output"}
    for name, command in processes.items():
        program = programs[name]
        assert program.command == f"/bin/sh -c 'exec {command}'"  # `%h` survives supervisord's expansion
        assert program.autorestart is RestartUnconditionally
        assert program.stopasgroup is False  # SIGTERM to a Celery pool process would abort its task
        assert program.killasgroup is True
        assert program.stdout_events_enabled is True
    assert programs["worker"].stopwaitsecs >= 30
    # Stopped in reverse priority order: the worker after web and beat, the output listener last.
    assert programs["output"].priority < programs["worker"].priority < programs["beat"].priority
    assert programs["beat"].priority < programs["web"].priority


# What `make up` exports to supervisord (devservers' var/env plus the shell's own), so to every program.
MAKE_UP_ENV = {
    "PATH": "/work/.venv/bin:/usr/bin:/bin",
    "HOME": "/home/dev",
    "LANG": "C.UTF-8",
    "DATABASE_URL": "postgres://scheduler:db-secret@127.0.0.1:5432/scheduler",
    "CELERY_BROKER_URL": "redis://:redis-secret@127.0.0.1:6379/0",
    "SCHEDULER_REDIS_URL": "redis://:redis-secret@127.0.0.1:6379/1",
    "SECRET_KEY": "k" * 50,
    "FLOWER_BASIC_AUTH": "admin:Zq8vLm3pR7tXw2Kd0",
    "SCHEDULER_FLOWER_URL": "http://127.0.0.1:5555/",
    "SCHEDULER_FLOWER_PORT": "5599",
    "DJANGO_SETTINGS_MODULE": "scheduler_project.settings",
    "AWS_SECRET_ACCESS_KEY": "anything-else-the-shell-had",
}


def test_flower_program_runs_with_the_broker_url_and_its_auth_only(tmp_path, monkeypatch):
    path = tmp_path / "supervisord.conf"
    path.write_text(config_text(procfile(ROOT / "Procfile"), tmp_path))
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    program = next(g for g in options.process_group_configs if g.name == "flower").process_configs[0]
    # supervisord adds nothing to what it inherited; the program is the wrapper, which filters that.
    assert not program.environment
    assert program.command == "/bin/sh -c 'exec python -m scheduler_project.flower'"

    started = {}

    def execve(executable, args, env):
        started.update(executable=executable, args=args, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "environ", dict(MAKE_UP_ENV))
    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(SystemExit):
        flower.main([])
    assert started["args"][:6] == [sys.executable, "-m", "celery", "-A", "scheduler_project.flower", "flower"]
    assert "--port=5599" in started["args"]
    assert started["env"] == {
        "CELERY_BROKER_URL": "redis://:redis-secret@127.0.0.1:6379/0",
        "FLOWER_BASIC_AUTH": "admin:Zq8vLm3pR7tXw2Kd0",
        "PATH": "/work/.venv/bin:/usr/bin:/bin",
        "HOME": "/home/dev",
        "LANG": "C.UTF-8",
    }


def event(name: str, data: bytes) -> bytes:
    payload = f"processname:{name} groupname:{name} pid:1 channel:stdout\n".encode() + data
    header = (
        "ver:3.0 server:supervisor serial:1 pool:output poolserial:1 "
        f"eventname:PROCESS_LOG_STDOUT len:{len(payload)}\n"
    )
    return header.encode() + payload


def test_listener_prefixes_each_line_with_its_process_and_keeps_split_lines_whole():
    events = io.BytesIO(
        event("worker", b"one\ntw")
        + event("web", "é ok\n".encode())
        + event("worker", b"o\n")
        + event("beat", b"\xff\n")
    )
    answers, out = io.StringIO(), io.StringIO()
    listen(events, answers, out, width=6)
    assert out.getvalue().splitlines() == ["worker | one", "web    | é ok", "worker | two", "beat   | \ufffd"]
    assert answers.getvalue() == "READY\n" + "RESULT 2\nOKREADY\n" * 4
