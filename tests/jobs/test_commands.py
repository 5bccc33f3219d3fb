"""manage.py commands: happy paths and clean errors (CommandError, never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.models import DeadLetter, Execution, Job
from jobs.services import job_create, job_trigger
from tests.conftest import ROOT, subprocess_env
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_submit_from_flags_and_list(shell_user):
    out = _call(
        "job_submit",
        "--owner",
        shell_user.username,
        "--name",
        "hello",
        "--every",
        "30",
        # Given last, --command takes everything after it, options of the program included.
        "--command",
        "sh",
        "-c",
        "echo hi",
    )
    job = Job.objects.get(name="hello")
    assert f"created job {job.pk}" in out
    assert "next run" in out
    assert job.payload == {"command": ["sh", "-c", "echo hi"]}
    assert job.schedule.every_seconds == 30
    listing = _call("job_list")
    assert "hello" in listing
    assert "every 30s" in listing
    assert "1 job(s)" in listing


def test_submit_from_a_json_file(tmp_path):
    user = UserFactory()
    spec = {
        "name": "cronjob",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {"type": "cron", "cron_expression": "0 3 * * *", "timezone": "Europe/Berlin"},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))
    _call("job_submit", "--owner", user.username, "--file", str(path))
    assert Job.objects.get(name="cronjob").schedule.timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--handler", "nope"], "payload.handler"),
        (["--name", "x", "--handler", "echo", "--cron", "99 * * * *"], "schedule.cron_expression"),
        (["--name", "x", "--handler", "echo", "--every", "0"], "schedule.every_seconds"),
        (["--name", "x", "--handler", "echo", "--priority", "11"], "priority"),
        (["--name", "x", "--command", "true"], "permission denied"),
        (["--name", "x", "--payload", "{not json"], "not valid JSON"),
        (["--file", "/nonexistent.json"], "cannot read"),
    ],
)
def test_submit_errors_are_clean(args, message):
    user = UserFactory()
    with pytest.raises(CommandError, match=message):
        _call("job_submit", "--owner", user.username, *args)
    assert Job.objects.count() == 0


def test_unknown_owner_and_unknown_ids():
    with pytest.raises(CommandError, match="does not exist"):
        _call("job_submit", "--owner", "ghost", "--name", "x", "--handler", "echo")
    for command in (
        "job_trigger",
        "job_pause",
        "job_resume",
        "execution_show",
        "execution_cancel",
        "deadletter_replay",
    ):
        with pytest.raises(CommandError, match="does not exist"):
            _call(command, "999999")
    with pytest.raises(CommandError, match="must be a number"):
        _call("job_trigger", "abc")


def test_trigger_pause_resume_cancel_show(node):
    job = job_create(
        owner=UserFactory(),
        name="j",
        kind="python",
        payload={"handler": "echo"},
        schedule={"type": "interval", "every_seconds": 60},
    )
    assert "queued" in _call("job_trigger", str(job.pk))
    execution = job.executions.get()
    assert "paused" in _call("job_pause", str(job.pk))
    with pytest.raises(CommandError, match="cannot be paused"):
        _call("job_pause", str(job.pk))
    assert "resumed" in _call("job_resume", str(job.pk))
    assert "cancelled" in _call("execution_cancel", str(execution.pk))
    with pytest.raises(CommandError, match="only active ones"):
        _call("execution_cancel", str(execution.pk))
    Execution.objects.filter(pk=execution.pk).update(output="line one\nline two")
    shown = _call("execution_show", str(execution.pk))
    assert "status:" in shown
    assert "cancelled" in shown
    assert "line two" in shown


def test_deadletter_list_and_replay(node):
    job = job_create(owner=UserFactory(), name="dl", kind="python", payload={"handler": "fail"})
    execution = job_trigger(job=job)
    from jobs.services import execution_mark_lost

    execution_mark_lost(execution_id=execution.pk, reason="boom")
    dead = DeadLetter.objects.get()
    listing = _call("deadletter_list")
    assert "boom" in listing
    assert "1 dead letter(s)" in listing
    out = _call("deadletter_replay", str(dead.pk))
    replay = Execution.objects.get(replay_of=execution)
    assert f"execution {replay.pk}" in out


def test_a_command_error_exits_non_zero_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "manage.py", "job_trigger", "424242"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "job 424242 does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# --- job_submit --file with a list: the bulk service, all or nothing ------------------------------


def _list_file(tmp_path, items) -> str:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(items))
    return str(path)


def test_submit_a_list_from_a_json_file(tmp_path):
    user = UserFactory()
    items = [
        {"name": "first", "kind": "python", "payload": {"handler": "echo"}},
        {
            "name": "second",
            "kind": "python",
            "payload": {"handler": "echo"},
            "schedule": {"type": "cron", "cron_expression": "0 3 * * *", "timezone": "Europe/Berlin"},
        },
    ]
    out = _call(
        "job_submit", "--owner", user.username, "--file", _list_file(tmp_path, items), "--priority", "7"
    )
    first, second = Job.objects.order_by("pk")
    assert (first.name, second.name) == ("first", "second")
    assert f"created job {first.pk} (first)" in out
    assert f"created job {second.pk} (second), next run" in out
    assert "2 job(s) created" in out
    assert second.schedule.timezone == "Europe/Berlin"
    assert {first.priority, second.priority} == {7}  # flags apply to every item, as they override one


def test_submit_a_bad_list_names_each_bad_item_and_creates_nothing(tmp_path):
    user = UserFactory()
    items = [
        {"name": "good", "kind": "python", "payload": {"handler": "echo"}},
        {"name": "bad handler", "kind": "python", "payload": {"handler": "nope"}},
        {"kind": "python", "payload": {"handler": "echo"}, "colour": "red"},
        "not an object",
    ]
    with pytest.raises(CommandError) as caught:
        _call("job_submit", "--owner", user.username, "--file", _list_file(tmp_path, items))
    message = str(caught.value)
    assert "3 of 4 jobs are invalid; no job was created" in message
    assert "item 1: payload.handler: 'nope' is not a registered handler" in message
    assert "item 2: colour: is not a job field; name: is required" in message
    assert "item 3: must be a JSON object" in message
    assert "item 0" not in message
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "the list: must hold 1 to"),
        ([{"name": "sh", "kind": "shell", "payload": {"command": ["true"]}}], "permission denied: .*item 0"),
    ],
    ids=["empty", "shell"],
)
def test_submit_list_refusals(tmp_path, items, message):
    user = UserFactory()
    with pytest.raises(CommandError, match=message):
        _call("job_submit", "--owner", user.username, "--file", _list_file(tmp_path, items))
    assert Job.objects.count() == 0


def test_submit_a_list_longer_than_the_limit(tmp_path, settings):
    settings.SCHEDULER_BULK_MAX_ITEMS = 2
    items = [{"name": f"j{i}", "kind": "python", "payload": {"handler": "echo"}} for i in range(3)]
    with pytest.raises(CommandError, match="must hold 1 to 2 items, not 3"):
        _call("job_submit", "--owner", UserFactory().username, "--file", _list_file(tmp_path, items))
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_bad_list_exits_non_zero_without_a_traceback(tmp_path):
    user = UserFactory()
    items = [
        {"name": "good", "kind": "python", "payload": {"handler": "echo"}},
        {"name": "bad", "kind": "python", "payload": {"handler": "echo"}, "priority": 42},
    ]
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "job_submit",
            "--owner",
            user.username,
            "--file",
            _list_file(tmp_path, items),
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "item 1: priority: must be from 0 to 9" in result.stderr
    assert "Traceback" not in result.stderr
    assert Job.objects.count() == 0
