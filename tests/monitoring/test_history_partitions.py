"""History in monthly partitions (issue 13): where rows land, months created ahead, retention drops months."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from jobs.models import DeadLetter, Execution, JobRetry
from monitoring.models import ExecutionLogChunk
from monitoring.selectors import log_read
from monitoring.services import history_partitions_ensure, history_prune, log_append
from monitoring.services.history import _month_detach, history_month_create
from monitoring.tasks import history_partitions, prune_retention
from nodes.models import ResourceAllocation
from scheduler_project.partitions import Month
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db
S = Execution.Status


def _where(model, pk: int) -> str:
    """The partition holding a row."""
    with connection.cursor() as cursor:
        table = model._meta.db_table
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def _tables(prefix: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind IN ('r', 'p')", [prefix + "%"]
        )
        return sorted(row[0] for row in cursor.fetchall())


def _run(slot, status=S.SUCCEEDED, **extra) -> Execution:
    finished = None if status in Execution.ACTIVE else slot + timedelta(minutes=1)
    return Execution.objects.create(
        job=JobFactory.create(), scheduled_for=slot, status=status, finished_at=finished, **extra
    )


def test_executions_and_their_output_land_in_the_month_of_their_slot():
    now = timezone.now()
    execution = _run(now, S.RUNNING)
    chunk = log_append(execution_id=execution.pk, text="hello\n")
    month = Month.of(now).suffix()
    assert _where(Execution, execution.pk) == f"jobs_execution_{month}"
    assert _where(ExecutionLogChunk, chunk.pk) == f"monitoring_executionlogchunk_{month}"
    assert chunk.scheduled_for == execution.scheduled_for
    far = _run(now + timedelta(days=400), S.PENDING)  # no partition that far ahead: the default one
    assert _where(Execution, far.pk) == "jobs_execution_default"


def test_months_are_created_ahead_and_take_their_rows_from_the_default_partition():
    later = timezone.now() + timedelta(days=200)
    early = _run(later, S.PENDING)  # a slot fired before its month's partition exists
    log_append(execution_id=early.pk, text="early\n")
    assert _where(Execution, early.pk) == "jobs_execution_default"
    created = history_partitions_ensure(now=later, ahead=1)
    month = Month.of(later)
    assert f"jobs_execution_{month.suffix()}" in created
    assert f"monitoring_executionlogchunk_{month.shift(1).suffix()}" in created
    assert _where(Execution, early.pk) == f"jobs_execution_{month.suffix()}"
    assert log_read(execution_id=early.pk).text == "early\n"
    assert history_partitions_ensure(now=later, ahead=1) == []  # idempotent
    history_partitions()  # the beat task: this month and SCHEDULER_HISTORY_MONTHS_AHEAD ahead exist
    current = Month.of(timezone.now())
    assert {f"jobs_execution_{current.shift(n).suffix()}" for n in range(3)} <= set(
        _tables("jobs_execution_p")
    )


def _old_month(settings) -> Month:
    settings.SCHEDULER_RETENTION_DAYS = 30
    month = Month.of(timezone.now()).shift(-3)  # ended more than 30 days ago
    history_month_create(month)
    return month


def test_retention_drops_a_whole_month_and_keeps_dead_letters_and_active_runs(settings):
    month = _old_month(settings)
    slot = month.start + timedelta(days=3)
    node = NodeFactory()
    done = _run(slot)
    log_append(execution_id=done.pk, text="gone with its month\n")
    ResourceAllocation.objects.create(node=node, execution=done, released_at=slot)
    failed = _run(slot + timedelta(seconds=1), S.FAILED)
    retry = Execution.objects.create(  # a later attempt whose slot is now: it stays, its link is cleared
        job=failed.job, scheduled_for=timezone.now(), attempt=2, status=S.SUCCEEDED, retry_of=failed
    )
    JobRetry.objects.create(
        job=failed.job, failed_execution=failed, next_attempt=2, retry_at=slot, status="enqueued"
    )
    dead = _run(slot + timedelta(seconds=2), S.DEAD)
    letter = DeadLetter.objects.create(job=dead.job, execution=dead, error="boom")
    log_append(execution_id=dead.pk, text="why it died\n")
    stuck = _run(slot + timedelta(seconds=3), S.PENDING)  # pending for months: still wanted
    partition = f"jobs_execution_{month.suffix()}"
    assert _where(Execution, done.pk) == partition

    prune_retention()  # the daily beat task

    assert partition not in _tables("jobs_execution_p")
    assert f"monitoring_executionlogchunk_{month.suffix()}" not in _tables("monitoring_executionlogchunk_p")
    left = set(Execution.objects.values_list("pk", flat=True))
    assert left == {retry.pk, dead.pk, stuck.pk}
    assert _where(Execution, dead.pk) == "jobs_execution_default"
    assert log_read(execution_id=dead.pk).text == "why it died\n"  # the dead letter keeps its output
    assert DeadLetter.objects.get(pk=letter.pk).execution.status == S.DEAD
    assert not ResourceAllocation.objects.filter(execution_id=done.pk).exists()
    assert not JobRetry.objects.filter(failed_execution_id=failed.pk).exists()
    retry.refresh_from_db()
    assert retry.retry_of_id is None  # no link to a row that is gone
    assert not ExecutionLogChunk.objects.filter(execution_id=done.pk).exists()
    assert Month.of(timezone.now()).suffix() in " ".join(_tables("jobs_execution_p"))  # live months stay


def test_a_pass_cut_off_after_the_detach_is_finished_by_the_next(settings):
    month = _old_month(settings)
    gone = _run(month.start + timedelta(days=1))
    assert _month_detach(month) == 0  # the first step alone, as if the process died after it
    assert not Execution.objects.filter(pk=gone.pk).exists()  # detached: out of sight already
    assert f"jobs_execution_{month.suffix()}" in _tables("jobs_execution_p")  # but not dropped
    pruned = history_prune()
    assert pruned.executions_dropped == 1
    assert f"jobs_execution_{month.suffix()}" not in _tables("jobs_execution_p")


def test_a_month_is_dropped_only_once_all_of_it_is_older_than_the_retention(settings):
    settings.SCHEDULER_RETENTION_DAYS = 30
    month = Month.of(timezone.now()).shift(-1)
    history_month_create(month)
    last = _run(month.end - timedelta(hours=1))  # the month's last run: 30 days after it, the month goes
    assert history_prune(now=month.end + timedelta(days=30) - timedelta(seconds=1)).months_dropped == []
    assert Execution.objects.filter(pk=last.pk).exists()
    assert history_prune(now=month.end + timedelta(days=30)).months_dropped == [month.suffix()]
    assert not Execution.objects.filter(pk=last.pk).exists()


def test_the_command_lists_creates_ahead_and_prunes(settings):
    month = _old_month(settings)
    _run(month.start + timedelta(days=2))
    out = StringIO()
    call_command("history_partitions", "--ensure", "--prune", stdout=out)
    text = out.getvalue()
    assert f"months dropped {month.suffix()}; 1 executions gone" in text
    assert "jobs_execution_default" in text
    assert "monitoring_executionlogchunk_default" in text
    assert f"jobs_execution_{Month.of(timezone.now()).shift(2).suffix()}" in text


def test_beat_creates_months_hourly_and_prunes_daily(settings):
    assert (
        settings.CELERY_BEAT_SCHEDULE["monitoring.history_partitions"]["task"]
        == "monitoring.history_partitions"
    )
    assert settings.CELERY_BEAT_SCHEDULE["monitoring.history_partitions"]["schedule"] == 3600
    assert settings.CELERY_BEAT_SCHEDULE["monitoring.prune_retention"]["schedule"] == 24 * 3600


def test_the_command_exits_1_with_the_database_message_when_it_cannot(monkeypatch):
    from django.db import OperationalError

    from monitoring.management.commands import history_partitions as command

    def refuse(**_kwargs):
        raise OperationalError("canceling statement due to lock timeout")

    monkeypatch.setattr(command, "history_prune", refuse)
    err = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("history_partitions", "--prune", stderr=err)
    assert exited.value.code == 1
    assert "history_partitions: canceling statement due to lock timeout" in err.getvalue()
