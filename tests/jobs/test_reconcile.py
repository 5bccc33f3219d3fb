"""The broker reconciler against the real Redis: finds queued executions whose message is gone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.broker import broker_execution_ids
from jobs.models import Execution
from jobs.reconcile import executions_reconcile_broker
from nodes.models import Node
from tests.factories import NodeFactory
from tests.nodes.conftest import make_job


@pytest.fixture
def node(redis_client):
    node = NodeFactory(name="probe@reconcile")
    yield node
    redis_client.delete(*[node.queue_name] + [f"{node.queue_name}:{p}" for p in range(1, 10)])


def queued_execution(node: Node, *, age_seconds: float) -> Execution:
    return Execution.objects.create(
        job=make_job(),
        scheduled_for=timezone.now(),
        status=Execution.Status.QUEUED,
        node=node,
        queued_at=timezone.now() - timedelta(seconds=age_seconds),
    )


@pytest.mark.django_db
def test_reconciler_republishes_only_old_queued_executions_missing_from_the_broker(
    node, django_capture_on_commit_callbacks
):
    old = queued_execution(node, age_seconds=60)
    young = queued_execution(node, age_seconds=0)
    assert broker_execution_ids(queue_names=[node.queue_name]) == set()

    with django_capture_on_commit_callbacks(execute=True):
        assert executions_reconcile_broker(older_than_seconds=10) == [old.pk]

    assert broker_execution_ids(queue_names=[node.queue_name]) == {old.pk}
    with django_capture_on_commit_callbacks(execute=True):
        assert executions_reconcile_broker(older_than_seconds=10) == []  # its message is there now
    assert young.pk not in broker_execution_ids(queue_names=[node.queue_name])


@pytest.mark.django_db
def test_reconciler_leaves_executions_of_offline_nodes_to_recovery(node):
    queued_execution(node, age_seconds=60)
    Node.objects.filter(pk=node.pk).update(status=Node.Status.OFFLINE)
    assert executions_reconcile_broker(older_than_seconds=10) == []
