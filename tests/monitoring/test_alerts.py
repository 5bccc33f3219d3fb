"""Alert rules fire once per incident through a real local webhook receiver, signed, then resolve."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import timedelta

import pytest
import redis
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs.models import DeadLetter, Execution, Job, JobSchedule
from monitoring.models import Alert, AlertDelivery, AlertRule
from monitoring.services import alert_rule_create, alerts_evaluate, deliveries_send
from nodes.models import Node
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db


def cycle() -> None:
    """One evaluator tick, as the monitoring.evaluate_alerts task runs it."""
    alerts_evaluate()
    deliveries_send()


def _rule(webhook, kind: str, **fields) -> AlertRule:
    return alert_rule_create(name=f"{kind} rule", kind=kind, channel="webhook", target=webhook.url, **fields)


def _execution(job: Job, status: str, *, seconds_ago: float = 0, **extra) -> Execution:
    now = timezone.now()
    return Execution.objects.create(
        job=job,
        scheduled_for=now
        - timedelta(seconds=seconds_ago)
        + timedelta(microseconds=Execution.objects.count()),
        status=status,
        started_at=now - timedelta(seconds=1),
        finished_at=now if status in Execution.TERMINAL else None,
        **extra,
    )


def _assert_signed(webhook, rule: AlertRule) -> None:
    for received in webhook.requests:
        expected = "sha256=" + hmac.new(rule.secret.encode(), received.body, hashlib.sha256).hexdigest()
        assert received.headers["X-Scheduler-Signature"] == expected
        assert received.headers["Content-Type"] == "application/json"


def _fires_once_then_resolves(webhook, rule: AlertRule, key: str, clear) -> None:
    """Fire: exactly one signed delivery however many ticks; clear the condition: exactly one resolve."""
    cycle()
    cycle()
    assert webhook.events() == [("fired", key)]
    alert = Alert.objects.get(rule=rule)
    assert alert.state == Alert.State.FIRING
    clear()
    cycle()
    cycle()
    assert webhook.events() == [("fired", key), ("resolved", key)]
    alert.refresh_from_db()
    assert alert.state == Alert.State.RESOLVED
    assert alert.resolved_at is not None
    assert list(alert.deliveries.values_list("event", "status", "attempts")) == [
        ("fired", "sent", 1),
        ("resolved", "sent", 1),
    ]
    body = webhook.requests[-1].json()
    assert body["rule"] == {"id": rule.pk, "name": rule.name, "kind": rule.kind, "job_id": rule.job_id}
    assert body["alert"]["state"] == "resolved"
    _assert_signed(webhook, rule)


def test_execution_failed_fires_for_its_job_and_resolves_on_a_later_success(webhook):
    job, other = JobFactory(), JobFactory()
    rule = _rule(webhook, "execution_failed", job=job)
    _execution(other, Execution.Status.FAILED, error="not watched")  # another job: no alert
    failed = _execution(job, Execution.Status.TIMED_OUT, error="timed out after 5s")
    _fires_once_then_resolves(
        webhook, rule, f"execution:{failed.pk}", lambda: _execution(job, Execution.Status.SUCCEEDED)
    )
    assert webhook.requests[0].json()["alert"]["details"]["status"] == "timed_out"


def test_execution_dead_fires_per_dead_letter_and_resolves_when_discarded(webhook):
    job = JobFactory()
    rule = _rule(webhook, "execution_dead")
    dead = _execution(job, Execution.Status.DEAD, error="boom")
    letter = DeadLetter.objects.create(job=job, execution=dead, error="boom")
    _fires_once_then_resolves(
        webhook,
        rule,
        f"dead_letter:{letter.pk}",
        lambda: DeadLetter.objects.filter(pk=letter.pk).update(status=DeadLetter.Status.DISCARDED),
    )


def test_node_offline_fires_and_resolves_when_it_heartbeats_again(webhook):
    node = NodeFactory(status=Node.Status.ONLINE, last_heartbeat_at=timezone.now())
    rule = _rule(webhook, "node_offline")
    cycle()
    assert webhook.events() == []
    Node.objects.filter(pk=node.pk).update(status=Node.Status.OFFLINE)
    _fires_once_then_resolves(
        webhook,
        rule,
        f"node:{node.name}",
        lambda: Node.objects.filter(pk=node.pk).update(
            status=Node.Status.ONLINE, last_heartbeat_at=timezone.now()
        ),
    )


def test_queue_backlog_counts_priority_sub_queues(webhook, redis_client: redis.Redis):
    rule = _rule(webhook, "queue_backlog", params={"threshold": 2, "queue": "backlog-test"})
    redis_client.rpush("backlog-test", "a", "b")
    cycle()
    assert webhook.events() == []  # 2 is not over 2
    redis_client.rpush("backlog-test:3", "c")  # kombu's priority sub-queue of the same queue
    _fires_once_then_resolves(
        webhook, rule, "queue:backlog-test", lambda: redis_client.delete("backlog-test", "backlog-test:3")
    )
    assert webhook.requests[0].json()["alert"]["details"] == {"queue": "backlog-test", "depth": 3}


def test_pending_too_long_fires_and_resolves_once_placed(webhook):
    rule = _rule(webhook, "pending_too_long", params={"seconds": 30})
    execution = _execution(JobFactory(), Execution.Status.PENDING, pending_reason="no node has 8 cpu free")
    cycle()
    assert webhook.events() == []  # just created
    Execution.objects.filter(pk=execution.pk).update(created_at=timezone.now() - timedelta(seconds=60))
    _fires_once_then_resolves(
        webhook,
        rule,
        f"execution:{execution.pk}",
        lambda: Execution.objects.filter(pk=execution.pk).update(status=Execution.Status.QUEUED),
    )


def test_slot_missed_is_a_dead_mans_switch_for_a_stopped_beat(webhook):
    job = JobFactory()
    slot = (timezone.now() - timedelta(seconds=120)).replace(microsecond=0)
    JobSchedule.objects.create(job=job, type="interval", every_seconds=60, next_run_at=slot)
    paused = JobFactory(status=Job.Status.PAUSED)
    JobSchedule.objects.create(job=paused, type="interval", every_seconds=60, next_run_at=slot)
    rule = _rule(webhook, "slot_missed", params={"seconds": 30})
    _fires_once_then_resolves(
        webhook,
        rule,
        f"job:{job.pk}:slot:{slot.isoformat()}",
        lambda: Execution.objects.create(job=job, scheduled_for=slot, status=Execution.Status.QUEUED),
    )


def test_failure_rate_over_threshold_in_window(webhook):
    job = JobFactory()
    rule = _rule(webhook, "failure_rate", params={"threshold_percent": 50, "min_executions": 2})
    _execution(job, Execution.Status.FAILED)
    cycle()
    assert webhook.events() == []  # one execution is under min_executions
    _execution(job, Execution.Status.FAILED)
    _execution(job, Execution.Status.SUCCEEDED)

    def clear() -> None:
        for _ in range(3):
            _execution(job, Execution.Status.SUCCEEDED)

    _fires_once_then_resolves(webhook, rule, "failure_rate", clear)
    assert webhook.requests[0].json()["alert"]["details"] == {"failed": 2, "total": 3, "rate_percent": 66.7}


def test_a_recurring_condition_is_a_new_incident(webhook):
    node = NodeFactory(status=Node.Status.OFFLINE)
    _rule(webhook, "node_offline")
    cycle()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE, last_heartbeat_at=timezone.now())
    cycle()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.OFFLINE)
    cycle()
    cycle()
    key = f"node:{node.name}"
    assert webhook.events() == [("fired", key), ("resolved", key), ("fired", key)]
    assert Alert.objects.filter(state="firing").count() == 1


def test_failed_webhook_is_retried_with_backoff_from_the_database(webhook, settings):
    settings.SCHEDULER_ALERT_BACKOFF_SECONDS = 30
    webhook.fail_next = 2
    _rule(webhook, "node_offline")
    NodeFactory(status=Node.Status.OFFLINE)
    before = timezone.now()
    cycle()
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert "HTTP 500" in delivery.last_error
    assert delivery.next_attempt_at >= before + timedelta(seconds=29)  # waits in the database
    deliveries_send()
    assert AlertDelivery.objects.get().attempts == 1  # not due yet: nothing sent
    deliveries_send(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 2)
    deliveries_send(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    assert len(webhook.requests) == 1


def test_webhook_to_a_forbidden_address_is_refused(webhook, settings):
    settings.SCHEDULER_HTTP_ALLOWLIST = []
    with pytest.raises(ValidationError) as excinfo:
        _rule(webhook, "node_offline")
    assert "target" in excinfo.value.message_dict
    # A name that resolves to loopback passes creation (no DNS then) and is refused when sending.
    rule = alert_rule_create(
        name="sneaky",
        kind="node_offline",
        channel="webhook",
        target=webhook.url.replace("127.0.0.1", "localhost"),
    )
    NodeFactory(status=Node.Status.OFFLINE)
    cycle()
    delivery = AlertDelivery.objects.get(alert__rule=rule)
    assert delivery.status == "failed"
    assert "loopback" in delivery.last_error
    assert webhook.requests == []


def test_email_and_log_channels(mailoutbox, caplog):
    alert_rule_create(
        name="mail", kind="node_offline", channel="email", target="ops@example.com, b@example.com"
    )
    alert_rule_create(name="log", kind="node_offline", channel="log")
    node = NodeFactory(status=Node.Status.OFFLINE)
    with caplog.at_level(logging.WARNING, logger="monitoring.channels"):
        cycle()
        cycle()
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["ops@example.com", "b@example.com"]
    assert node.name in mailoutbox[0].subject
    assert "FIRED" in mailoutbox[0].subject
    assert [r.getMessage() for r in caplog.records if "alert fired (log)" in r.getMessage()] == [
        f"alert fired (log): node {node.name} is offline"
    ]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "queue_backlog", "params": {}}, "params.threshold"),
        ({"kind": "queue_backlog", "params": {"threshold": -1}}, "params.threshold"),
        ({"kind": "failure_rate", "params": {"threshold_percent": 150}}, "params.threshold_percent"),
        ({"kind": "node_offline", "params": {"nope": 1}}, "params.nope"),
        ({"kind": "nope"}, "kind"),
        ({"kind": "node_offline", "channel": "email", "target": "not-an-address"}, "target"),
        ({"kind": "node_offline", "channel": "webhook", "target": "ftp://example.com/"}, "target"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValidationError) as excinfo:
        alert_rule_create(name="bad", **fields)
    assert field in excinfo.value.message_dict
    assert not AlertRule.objects.exists()
