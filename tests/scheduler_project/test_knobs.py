"""A wrong SCHEDULER_* value stops a process with one line naming it and what it expects, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scheduler_project.knobs import Knobs
from tests.conftest import ROOT, subprocess_env


def test_knobs_read_types_and_ranges_and_name_every_wrong_value():
    knob = Knobs({"A": "12", "B": "x", "C": "100000", "D": "maybe", "E": "blue", "F": "", "G": "0.5"})
    assert knob.int("A", 1, low=1, high=20) == 12
    assert knob.int("B", 3) == 3
    assert knob.float("C", 1.0, low=0.001, high=9999.999) == 1.0
    assert knob.bool("D", True) is True
    assert knob.str("E", "red", choices={"red", "green"}) == "red"
    assert knob.optional_int("F") is None  # empty: unset
    assert knob.float("G", 1.0, low=0.1) == 0.5
    assert knob.int("UNSET", 7) == 7
    assert knob.errors == [
        "B='x' is not a whole number; expected a whole number",
        "C='100000' is out of range; expected a number from 0.001 to 9999.999",
        "D='maybe' is not a yes/no value; expected 1/0, true/false, yes/no or on/off",
        "E='blue' is not one of green, red",
    ]
    with pytest.raises(SystemExit) as stopped:
        knob.check()
    assert str(stopped.value).splitlines()[1] == (
        "configuration: C='100000' is out of range; expected a number from 0.001 to 9999.999"
    )


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("argv", "variable", "value", "expected"),
    [
        ([sys.executable, "manage.py", "check"], "SCHEDULER_NODE_CPU", "100000", "from 0.001 to 9999.999"),
        ([sys.executable, "manage.py", "check"], "SCHEDULER_HEARTBEAT_SECONDS", "soon", "is not a number"),
        ([sys.executable, "-m", "celery", "-A", "scheduler_project", "worker", "-n", "bad@knobs"],
         "SCHEDULER_NODE_CPU", "100000", "from 0.001 to 9999.999"),
        ([sys.executable, "-m", "scheduler_project.devservers", "env", "up"], "SCHEDULER_WEB_PORT", "eighty",
         "is not a whole number; expected a whole number from 1 to 65535"),
    ],
)  # fmt: skip
def test_a_wrong_value_stops_the_process_with_one_line(argv, variable, value, expected):
    result = _run(argv, **{variable: value})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if variable in line]
    assert len(lines) == 1, result.stderr
    assert f"{variable}={value!r}" in lines[0]
    assert expected in lines[0]


def test_a_worker_with_node_cpu_beyond_the_database_column_never_starts():
    """SCHEDULER_NODE_CPU=100000 used to start the worker, which died registering (numeric field overflow)."""
    result = _run([sys.executable, "-m", "celery", "-A", "scheduler_project", "worker", "-n", "big@knobs"],
                  SCHEDULER_NODE_CPU="100000")  # fmt: skip
    assert result.returncode != 0
    assert "numeric field overflow" not in result.stderr
    assert "ready" not in result.stderr.lower()
    assert os.environ.get("SCHEDULER_NODE_CPU") is None  # the test's own process untouched
