"""`make up`'s supervisord configuration comes from the Procfile, and its output listener names every line."""

from __future__ import annotations

import io

from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

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
