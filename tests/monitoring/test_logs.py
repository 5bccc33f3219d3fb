"""Execution output: chunks appended while running, read by offset, searched across executions, pruned."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import DeadLetter, Execution, JobRetry
from monitoring.models import ExecutionLogChunk
from monitoring.selectors import log_read
from monitoring.services import ExecutionLogWriter, executions_prune, log_append
from monitoring.tasks import prune_retention
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db


def _execution(status: str = Execution.Status.RUNNING, job=None, **extra) -> Execution:
    now = timezone.now()
    job = job if job is not None else JobFactory.create()
    extra.setdefault("scheduled_for", now + timedelta(microseconds=Execution.objects.count()))
    return Execution.objects.create(job=job, status=status, started_at=now, **extra)


def test_appended_output_is_followed_by_offset_until_complete():
    execution = _execution()
    log_append(execution_id=execution.pk, text="line 1\n")
    piece = log_read(execution_id=execution.pk, offset=0)
    assert (piece.text, piece.next_offset, piece.complete, piece.status) == ("line 1\n", 7, False, "running")
    log_append(execution_id=execution.pk, text="line 2\n")
    log_append(execution_id=execution.pk, text="")  # nothing stored
    piece = log_read(execution_id=execution.pk, offset=piece.next_offset)
    assert (piece.text, piece.next_offset, piece.complete) == ("line 2\n", 14, False)
    assert log_read(execution_id=execution.pk, offset=3).text == "e 1\nline 2\n"
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.SUCCEEDED)
    piece = log_read(execution_id=execution.pk, offset=14)
    assert (piece.text, piece.next_offset, piece.complete, piece.status) == ("", 14, True, "succeeded")
    assert log_read(execution_id=execution.pk, offset=0).text == "line 1\nline 2\n"
    assert list(ExecutionLogChunk.objects.values_list("seq", "offset")) == [(0, 0), (1, 7)]


def test_output_over_the_bound_drops_the_oldest_chunks_and_says_so(settings):
    settings.SCHEDULER_LOG_MAX_CHARS = 25
    execution = _execution()
    for i in range(5):
        log_append(execution_id=execution.pk, text=f"chunk-{i}\n")  # 8 characters each
    assert list(ExecutionLogChunk.objects.values_list("seq", flat=True)) == [2, 3, 4]
    piece = log_read(execution_id=execution.pk, offset=0)
    assert piece.text == "[16 characters of older output dropped]\nchunk-2\nchunk-3\nchunk-4\n"
    assert piece.next_offset == 40
    assert log_read(execution_id=execution.pk, offset=37).text == "-4\n"


def test_without_chunks_the_output_field_is_read():
    execution = _execution(Execution.Status.FAILED, output="all of it\n", finished_at=timezone.now())
    piece = log_read(execution_id=execution.pk, offset=4)
    assert (piece.text, piece.next_offset, piece.complete) == ("of it\n", 10, True)
    with pytest.raises(Execution.DoesNotExist):
        log_read(execution_id=execution.pk + 1000)


def test_writer_buffers_bytes_from_the_pump_and_decodes_split_characters():
    execution = _execution()
    writer = ExecutionLogWriter(execution_id=execution.pk, min_interval=3600)
    data = "héllo wörld\n".encode()
    writer.feed(data[:2])  # splits the two-byte é
    writer.feed(data[2:])
    assert writer.flush(final=True) is not None
    assert writer.flush() is None  # rate-limited
    assert log_read(execution_id=execution.pk).text == "héllo wörld\n"


def test_log_api_scopes_executions_to_their_owner(make_user, client_for):
    alice, bob = make_user("alice", "submitter"), make_user("bob", "submitter")
    execution = _execution(job=JobFactory(owner=alice))
    log_append(execution_id=execution.pk, text="secret output\n")
    url = f"/api/v1/executions/{execution.pk}/log/"
    response = client_for(alice).get(url, {"offset": 7})
    assert response.status_code == 200
    assert response.json() == {"text": "output\n", "next_offset": 14, "complete": False, "status": "running"}
    assert client_for(bob).get(url).status_code == 404
    assert client_for(make_user("op", "operator")).get(url).status_code == 200
    assert client_for(alice).get(url, {"offset": -1}).json() == {
        "offset": ["Ensure this value is greater than or equal to 0."]
    }
    assert client_for(alice).get(f"/api/v1/executions/{execution.pk + 999}/log/").status_code == 404


def test_logs_query_filters_by_job_node_status_time_and_text(make_user, client_for):
    alice, bob = make_user("alice", "submitter"), make_user("bob", "submitter")
    job, node = JobFactory(owner=alice), NodeFactory()
    hit = _execution(Execution.Status.FAILED, job=job, node=node, output="... Traceback: KeyError 'x'\n")
    streamed = _execution(job=job)
    log_append(execution_id=streamed.pk, text="streaming KEYERROR now\n")
    _execution(Execution.Status.SUCCEEDED, job=job, output="fine\n")
    _execution(Execution.Status.FAILED, job=JobFactory(owner=bob), output="KeyError too\n")  # bob's
    api = client_for(alice)

    def ids(**params) -> list[int]:
        response = api.get("/api/v1/logs/", params)
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids(contains="keyerror") == [streamed.pk, hit.pk]
    assert ids(contains="keyerror", status="failed") == [hit.pk]
    assert ids(node=node.name) == [hit.pk]
    assert ids(job=job.pk, limit=1) == [_latest(job)]
    assert ids(since=(timezone.now() + timedelta(minutes=1)).isoformat()) == []
    assert len(ids(until=(timezone.now() + timedelta(minutes=1)).isoformat())) == 3
    row = api.get("/api/v1/logs/", {"contains": "KeyError", "status": "failed"}).json()["results"][0]
    assert "KeyError 'x'" in row["excerpt"]
    assert row["node"] == node.name
    assert row["job_name"] == job.name
    assert api.get("/api/v1/logs/", {"status": "nope"}).status_code == 400


def _latest(job) -> int:
    return Execution.objects.filter(job=job).order_by("-created_at", "-pk").values_list("pk", flat=True)[0]


def test_retention_prunes_old_finished_executions_of_the_default_partition_but_keeps_dead_letters(settings):
    # Slots no month partition covers (long ago) live in the default partition, pruned row by row; whole
    # months are dropped instead (tests/monitoring/test_history_partitions.py).
    settings.SCHEDULER_RETENTION_DAYS = 7
    old = timezone.now() - timedelta(days=8)
    slot = {"scheduled_for": timezone.now() - timedelta(days=400)}
    pruned = _execution(Execution.Status.SUCCEEDED, finished_at=old, **slot)
    log_append(execution_id=pruned.pk, text="old output\n")
    retried = _execution(
        Execution.Status.RETRYING, finished_at=old, scheduled_for=slot["scheduled_for"] + timedelta(1)
    )
    JobRetry.objects.create(job=retried.job, failed_execution=retried, next_attempt=2, retry_at=old)
    dead = _execution(
        Execution.Status.DEAD, finished_at=old, scheduled_for=slot["scheduled_for"] + timedelta(2)
    )
    DeadLetter.objects.create(job=dead.job, execution=dead)
    recent = _execution(Execution.Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=6), **slot)
    running = _execution(Execution.Status.RUNNING, **slot)
    Execution.objects.filter(pk=running.pk).update(created_at=old)
    prune_retention()  # the beat entry's task
    assert set(Execution.objects.values_list("pk", flat=True)) == {dead.pk, recent.pk, running.pk}
    assert not ExecutionLogChunk.objects.exists()
    assert executions_prune(older_than_days=0) == 0  # 0 turns retention off


def test_retention_runs_daily_from_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["monitoring.prune_retention"]
    assert entry["task"] == "monitoring.prune_retention"
    assert entry["schedule"] == 24 * 3600
    assert settings.CELERY_BEAT_SCHEDULE["monitoring.evaluate_alerts"]["task"] == "monitoring.evaluate_alerts"


def test_execution_follow_prints_output_until_the_end():
    execution = _execution(Execution.Status.SUCCEEDED, finished_at=timezone.now())
    log_append(execution_id=execution.pk, text="one\n")
    log_append(execution_id=execution.pk, text="two\n")
    out, err = StringIO(), StringIO()
    call_command("execution_follow", str(execution.pk), "--interval", "0.05", stdout=out, stderr=err)
    assert out.getvalue() == "one\ntwo\n"
    assert "ended: succeeded" in err.getvalue()
    with pytest.raises(CommandError, match=f"execution {execution.pk + 999} does not exist"):
        call_command("execution_follow", str(execution.pk + 999))
