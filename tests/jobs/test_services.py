"""Services against the real database: claim and fencing, cancel, lost, retries, misfire, sync with beat."""

from __future__ import annotations

import os
import random
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs import messages
from jobs.executors import Outcome
from jobs.models import DeadLetter, Execution, Job, JobRetry
from jobs.services import (
    execution_cancel,
    execution_claim,
    execution_finish,
    execution_mark_lost,
    executions_claims_lost,
    executions_held,
    firing,
    job_create,
    job_delete,
    job_pause,
    job_resume,
    job_trigger,
    job_update,
    retries_sweep,
    retry_delay_seconds,
)
from tests.factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db
ECHO = {"handler": "echo"}


def claim(execution: Execution):
    """Claim as the worker of the `node` fixture would, from this process."""
    return execution_claim(execution_id=execution.pk, node_name="unit@testhost", pid=os.getpid())


def _interval_job(**kwargs) -> Job:
    return job_create(
        owner=UserFactory(),
        name="j",
        kind="python",
        payload=ECHO,
        schedule={"type": "interval", "every_seconds": 60},
        **kwargs,
    )


def test_backoff_grows_exponentially_is_capped_and_jittered():
    job = JobFactory.build(retry_backoff_seconds=10, retry_backoff_max_seconds=60, retry_jitter=False)
    assert [retry_delay_seconds(job=job, attempt=n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    job.retry_jitter = True
    rng = random.Random(1)
    delays = [retry_delay_seconds(job=job, attempt=n, rng=rng) for n in (1, 2, 3)]
    assert 8 <= delays[0] <= 10
    assert 16 <= delays[1] <= 20
    assert 32 <= delays[2] <= 40


def test_claim_is_won_once_and_finish_is_fenced(node):
    job = _interval_job()
    execution = job_trigger(job=job)
    assert execution.status == Execution.Status.QUEUED
    assert execution.node == node
    claimed = claim(execution)
    assert claimed is not None
    assert Execution.objects.get(pk=execution.pk).status == Execution.Status.RUNNING
    assert (claimed.kind, claimed.payload, claimed.attempt) == ("python", ECHO, 1)  # read by the claim
    token = claimed.claim_token
    Execution.objects.filter(pk=execution.pk).update(worker_pid=os.getppid())  # "another, live process"
    assert claim(execution) is None  # a redelivered message runs nothing
    assert Execution.objects.get(pk=execution.pk).status == Execution.Status.RUNNING  # alive: left alone
    assert not execution_finish(
        execution_id=execution.pk, claim_token=type(token)(int=1), outcome=Outcome("failed")
    )
    assert execution_finish(
        execution_id=execution.pk, claim_token=token, outcome=Outcome("succeeded", exit_code=0)
    )
    done = Execution.objects.get(pk=execution.pk)
    assert done.status == "succeeded"
    assert done.progress == 100.0


def test_claim_of_a_run_whose_process_died_counts_as_a_failed_attempt(node):
    job = _interval_job(max_retries=1)
    execution = job_trigger(job=job)
    claim(execution)
    Execution.objects.filter(pk=execution.pk).update(worker_pid=2**22 + 12345)  # no such process
    assert claim(execution) is None
    lost = Execution.objects.get(pk=execution.pk)
    assert lost.status == Execution.Status.LOST
    assert "died" in lost.error
    assert JobRetry.objects.get(failed_execution=lost).next_attempt == 2


def test_cancel_and_lost_are_conditional(node):
    job = _interval_job()
    execution = job_trigger(job=job)
    assert execution_cancel(execution_id=execution.pk)
    assert not execution_cancel(execution_id=execution.pk)
    assert not execution_mark_lost(execution_id=execution.pk, reason="x")
    assert not Execution.objects.get(pk=execution.pk).allocation.active  # released at once
    assert claim(execution) is None


def test_lost_attempts_retry_then_dead_letter(node):
    job = _interval_job(max_retries=1, retry_backoff_seconds=0, retry_backoff_max_seconds=0)
    first = job_trigger(job=job)
    assert execution_mark_lost(execution_id=first.pk, reason="node died")
    assert retries_sweep() == 1
    second = Execution.objects.get(retry_of=first)
    assert (second.attempt, second.scheduled_for, second.trigger) == (2, first.scheduled_for, "retry")
    assert execution_mark_lost(execution_id=second.pk, reason="node died")
    assert DeadLetter.objects.get(job=job).execution == second
    assert retries_sweep() == 0


def test_duplicate_fire_is_a_no_op_and_bookkeeping_is_done(node):
    job = _interval_job()
    slot = timezone.now().replace(microsecond=0)
    assert firing.fire(job_id=job.pk, scheduled_for=slot) is not None
    assert firing.fire(job_id=job.pk, scheduled_for=slot) is None
    assert job.executions.count() == 1
    job.schedule.refresh_from_db()
    assert job.schedule.total_runs == 1
    assert job.schedule.next_run_at > slot


def test_misfire_run_once_runs_one_late_slot_and_skip_skips(node):
    job = _interval_job()
    now = timezone.now().replace(microsecond=0)
    late = [now - timedelta(minutes=m) for m in (10, 9, 8)]
    results = [firing.fire(job_id=job.pk, scheduled_for=slot).status for slot in late]
    assert results == ["queued", "skipped", "skipped"]
    skip_job = _interval_job(misfire_policy="skip")
    assert firing.fire(job_id=skip_job.pk, scheduled_for=late[0]).status == "skipped"


def test_max_runs_completes_the_job_and_disables_its_task(node):
    job = job_create(
        owner=UserFactory(),
        name="j",
        kind="python",
        payload=ECHO,
        schedule={"type": "interval", "every_seconds": 60, "max_runs": 1},
    )
    firing.fire(job_id=job.pk, scheduled_for=timezone.now().replace(microsecond=0))
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED
    assert not PeriodicTask.objects.get(name=f"job:{job.pk}").enabled
    assert firing.fire(job_id=job.pk, scheduled_for=timezone.now()) is None


def test_pending_when_no_node_fits_then_placed(db):
    job = _interval_job()
    execution = job_trigger(job=job)
    assert execution.status == Execution.Status.PENDING
    assert execution.pending_reason
    from tests.factories import NodeFactory

    NodeFactory()
    assert firing.pending_place() == 1
    assert Execution.objects.get(pk=execution.pk).status == Execution.Status.QUEUED


def test_pause_resume_delete_keep_the_periodic_task_in_sync():
    job = _interval_job()
    task = PeriodicTask.objects.get(name=f"job:{job.pk}")
    assert task.enabled
    assert task.interval.every == 60
    assert task.kwargs == f'{{"job_id": {job.pk}}}'
    assert job_pause(job=job)
    assert not job_pause(job=job)
    assert not PeriodicTask.objects.get(pk=task.pk).enabled
    assert job_resume(job=job)
    assert PeriodicTask.objects.get(pk=task.pk).enabled
    job_update(job=job, schedule={"type": "cron", "cron_expression": "*/5 * * * *", "timezone": "Asia/Tokyo"})
    task.refresh_from_db()
    assert task.interval is None
    assert task.crontab.minute == "*/5"
    assert str(task.crontab.timezone) == "Asia/Tokyo"
    job_update(job=job, schedule=None)
    assert not PeriodicTask.objects.filter(name=f"job:{job.pk}").exists()
    job_update(job=job, schedule={"type": "interval", "every_seconds": 5})
    assert job_delete(job=job)
    assert Job.objects.get(pk=job.pk).status == Job.Status.ARCHIVED
    assert not PeriodicTask.objects.get(name=f"job:{job.pk}").enabled


def test_update_validates_like_create():
    from django.core.exceptions import ValidationError

    job = _interval_job()
    with pytest.raises(ValidationError) as info:
        job_update(job=job, priority=12, schedule={"type": "interval", "every_seconds": 0})
    assert {"priority", "schedule.every_seconds"} <= set(info.value.message_dict)
    assert Job.objects.get(pk=job.pk).priority == 5


def test_broker_priority_is_inverted_for_redis():
    assert messages.broker_priority(9) == 0
    assert messages.broker_priority(0) == 9


def _queued_placement_passes(redis_client) -> int:
    keys = ["default", *(f"default:{step}" for step in range(1, 10))]  # kombu's priority sub-queues
    return sum(
        body.count(b"jobs.dispatch_pending") for key in keys for body in redis_client.lrange(key, 0, -1)
    )


def test_placement_nudges_coalesce_while_queued_and_are_never_lost(db, redis_client):
    # Capacity freed while a pass is already running must start another pass: no lost wakeup.
    from django.core.cache import cache

    cache.delete(messages.DISPATCH_QUEUED_KEY)
    for key in ["default", *(f"default:{step}" for step in range(1, 10))]:
        redis_client.delete(key)
    messages._send_dispatch_pending()
    messages._send_dispatch_pending()
    assert _queued_placement_passes(redis_client) == 1  # a burst rides on the queued pass

    firing.pending_place_pass()  # the worker starts that pass (it clears the flag first)
    messages._send_dispatch_pending()  # a release during the pass
    assert _queued_placement_passes(redis_client) == 2
    cache.delete(messages.DISPATCH_QUEUED_KEY)


@pytest.mark.django_db(transaction=True)
def test_a_claim_commits_without_waiting_for_the_wal_flush_and_leaves_the_session_as_it_was(node):
    from django.db import connection

    execution = job_trigger(job=_interval_job())
    claimed = claim(execution)  # outside a transaction: one implicit transaction of its own
    assert claimed is not None
    assert Execution.objects.get(pk=execution.pk).status == Execution.Status.RUNNING
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"  # the setting held for the claim's statement only
    assert execution_finish(
        execution_id=execution.pk, claim_token=claimed.claim_token, outcome=Outcome("succeeded")
    )


def test_a_finish_whose_claim_was_lost_keeps_the_reservation_of_the_queued_execution(node):
    # A claim lost in a database crash: the row is queued again (to be republished), the old run ends.
    execution = job_trigger(job=_interval_job())
    claimed = claim(execution)
    Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.QUEUED, claim_token=None)
    assert not execution_finish(
        execution_id=execution.pk, claim_token=claimed.claim_token, outcome=Outcome("succeeded")
    )
    assert Execution.objects.get(pk=execution.pk).allocation.active  # still reserved for its next run


def test_a_claim_retried_with_its_token_after_a_cut_off_answer_is_its_own(node):
    job = _interval_job()
    execution = job_trigger(job=job)
    token = uuid.uuid4()
    first = execution_claim(execution_id=execution.pk, node_name=node.name, pid=os.getpid(), token=token)
    assert first is not None
    # The same claim again (its answer was lost to a dropped connection): recognised, not marked lost.
    again = execution_claim(execution_id=execution.pk, node_name=node.name, pid=os.getpid(), token=token)
    assert again == first
    assert Execution.objects.get(pk=execution.pk).status == Execution.Status.RUNNING


def test_a_dead_attempt_whose_processes_survive_is_not_marked_lost(node):
    job = _interval_job(max_retries=1)
    execution = job_trigger(job=job)
    claim(execution)
    Execution.objects.filter(pk=execution.pk).update(worker_pid=2**22 + 12345)  # no such process
    checked = []

    def survive(token):
        checked.append(token)
        return False

    assert (
        execution_claim(
            execution_id=execution.pk, node_name=node.name, pid=os.getpid(), leftovers_gone=survive
        )
        is None
    )
    assert checked == [Execution.objects.get(pk=execution.pk).claim_token]
    assert Execution.objects.get(pk=execution.pk).status == Execution.Status.RUNNING  # waits for them


def test_claims_lost_only_while_the_claim_token_is_the_same(node):
    job = _interval_job(max_retries=0)
    first, second = job_trigger(job=job), job_trigger(job=job)
    claim(first)
    claim(second)
    held = executions_held(node_name=node.name, statuses=["running"])
    assert {h.id for h in held} == {first.pk, second.pk}
    Execution.objects.filter(pk=second.pk).update(claim_token=uuid.uuid4())  # claimed anew meanwhile
    lost = executions_claims_lost(claims=held, reason="gone")
    assert [c.id for c in lost] == [first.pk]
    assert Execution.objects.get(pk=first.pk).status == Execution.Status.LOST
    assert Execution.objects.get(pk=second.pk).status == Execution.Status.RUNNING
