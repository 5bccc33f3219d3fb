"""The execution state module's transition table, walked pair by pair: allowed ones work (with their
effects), every other one is refused before anything is written."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import DeadLetter, Execution, JobRetry
from jobs.services.executions import TRANSITIONS, Effect, IllegalTransition, transition
from nodes.models import Node, ResourceAllocation
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db
STATUSES = [status for status, _ in Execution.Status.choices]
PAIRS = list(itertools.product(STATUSES, STATUSES))


def _execution(status: str, node: Node, *, max_retries: int = 1) -> Execution:
    job: Any = JobFactory(max_retries=max_retries, retry_backoff_seconds=0, retry_jitter=False)
    execution = Execution.objects.create(
        job=job, scheduled_for=timezone.now(), status=status, node=node if status != "pending" else None
    )
    if status in ("queued", "running"):  # what a placed execution holds
        ResourceAllocation.objects.create(node=node, execution=execution, cpu=Decimal("1"), memory_mb=10)
        Node.objects.filter(pk=node.pk).update(cpu_allocated=Decimal("1"), memory_mb_allocated=10)
    return execution


def test_the_table_has_every_documented_path():
    allowed = set(TRANSITIONS)
    assert len(allowed) == 13
    for status in ("pending", "queued", "running"):
        assert (status, "cancelled") in allowed
    assert not any(source in ("succeeded", "dead", "lost", "skipped") for source, _ in allowed)  # final
    assert not any(target == "failed" for _, target in allowed)  # a failure ends retrying or dead


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_each_pair_is_allowed_or_refused_as_the_table_says(
    source, target, django_capture_on_commit_callbacks
):
    node = NodeFactory(cpu_capacity=Decimal("4"))
    execution = _execution(source, node)
    effects = TRANSITIONS.get((source, target))
    values = {"node_id": node.pk} if target == "queued" else {}

    if effects is None:
        with pytest.raises(IllegalTransition, match=f"{source!r} cannot become {target!r}"):
            transition(ids=[execution.pk], source=[source], target=target, values=values)
        assert Execution.objects.get(pk=execution.pk).status == source
        return

    with django_capture_on_commit_callbacks() as callbacks:
        changed = transition(ids=[execution.pk], source=[source], target=target, values=values)
    assert [(c.id, c.source, c.target) for c in changed] == [(execution.pk, source, target)]
    assert Execution.objects.get(pk=execution.pk).status == target
    node.refresh_from_db()
    held = ResourceAllocation.objects.filter(execution=execution, released_at__isnull=True).exists()
    if Effect.RELEASE in effects:
        assert not held
        assert (node.cpu_allocated, node.memory_mb_allocated) == (0, 0)
    elif source in ("queued", "running"):
        assert held  # e.g. a running run cancelled: its worker frees the capacity when it exits
    decided = (
        JobRetry.objects.filter(failed_execution=execution).exists()
        or DeadLetter.objects.filter(execution=execution).exists()
    )
    assert decided == (Effect.DECIDE in effects)
    if Effect.PUBLISH in effects:
        assert callbacks  # jobs.execute after commit


def test_a_transition_changes_only_rows_still_in_the_source_status():
    node = NodeFactory()
    queued = _execution("queued", node)
    running = _execution("running", node)
    changed = transition(ids=[queued.pk, running.pk], source=["queued"], target="running")
    assert [c.id for c in changed] == [queued.pk]
    assert transition(ids=[queued.pk], source=["queued"], target="running") == []  # lost the race: no row


def test_failed_attempts_retry_while_attempts_remain_then_dead_letter():
    node = NodeFactory()
    first = _execution("running", node, max_retries=1)
    transition(ids=[first.pk], source=["running"], target="lost")
    assert JobRetry.objects.get(failed_execution=first).next_attempt == 2
    last = _execution("running", node, max_retries=0)
    transition(ids=[last.pk], source=["running"], target="timed_out")
    assert DeadLetter.objects.get(execution=last).error == "timed_out"
