"""Captured execution output, alert rules, their incidents (alerts) and the deliveries of each incident."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q


class ExecutionLogChunk(models.Model):
    """A piece of an execution's output, stored while it runs; `offset` counts characters from the start.

    Partitioned by month on its execution's `scheduled_for` (copied here), like the executions, so that
    retention drops a month of output with its month of executions (monitoring.services.history).
    """

    execution = models.ForeignKey(
        "jobs.Execution", on_delete=models.CASCADE, related_name="log_chunks", db_constraint=False
    )
    scheduled_for = models.DateTimeField(help_text="its execution's slot: the partition key")
    seq = models.PositiveIntegerField()
    offset = models.PositiveBigIntegerField(help_text="characters of output before this chunk")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["execution", "seq"]
        constraints = [
            # With the partition key (PostgreSQL's rule); one scheduled_for per execution: the same rule.
            models.UniqueConstraint(fields=["execution", "seq", "scheduled_for"], name="logchunk_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"log chunk {self.seq} of execution {self.execution_id}"

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


class AlertRule(models.Model):
    """What to watch (kind + params, optionally one job) and where to tell (channel + target)."""

    class Kind(models.TextChoices):
        EXECUTION_FAILED = "execution_failed"  # an execution failed, timed out or was lost
        EXECUTION_DEAD = "execution_dead"  # an execution was dead-lettered (retries exhausted)
        NODE_OFFLINE = "node_offline"  # a node stopped heartbeating or shut down
        QUEUE_BACKLOG = "queue_backlog"  # a broker queue holds more than `threshold` messages
        PENDING_TOO_LONG = "pending_too_long"  # an execution waits for a node longer than `seconds`
        SLOT_MISSED = "slot_missed"  # dead-man's switch: a due slot has not fired `seconds` after due
        FAILURE_RATE = "failure_rate"  # share of failed runs over `threshold_percent` in `window_seconds`

    class Channel(models.TextChoices):
        WEBHOOK = "webhook"  # POST JSON, HMAC-SHA256 signed with the rule's secret
        EMAIL = "email"  # Django's configured mail backend; target is a comma-separated address list
        LOG = "log"  # a WARNING line in the evaluating worker's log

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    params = models.JSONField(default=dict, blank=True)
    channel = models.CharField(max_length=16, choices=Channel.choices, default=Channel.LOG)
    target = models.CharField(max_length=1000, blank=True, help_text="webhook URL or email addresses")
    secret = models.CharField(max_length=128, default=_new_secret, help_text="HMAC key of webhook bodies")
    enabled = models.BooleanField(default=True)
    job = models.ForeignKey(
        "jobs.Job", on_delete=models.CASCADE, null=True, blank=True, related_name="alert_rules"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} -> {self.channel})"


class Alert(models.Model):
    """One incident of one rule: fired once, resolved once; `incident_key` names what it is about."""

    class State(models.TextChoices):
        FIRING = "firing"  # the condition holds
        RESOLVED = "resolved"  # the condition cleared

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    incident_key = models.CharField(max_length=255)
    state = models.CharField(max_length=16, choices=State.choices, default=State.FIRING)
    summary = models.CharField(max_length=500)
    details = models.JSONField(default=dict, blank=True)
    fired_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-fired_at", "-pk"]
        constraints = [
            # One open incident per key: two evaluators racing cannot fire the same incident twice.
            models.UniqueConstraint(
                fields=["rule", "incident_key"], condition=Q(state="firing"), name="alert_one_firing_per_key"
            ),
        ]
        indexes = [models.Index(fields=["state", "-fired_at"])]

    def __str__(self) -> str:
        return f"alert {self.pk} {self.incident_key} ({self.state})"


class AlertDelivery(models.Model):
    """Sending one event (fired or resolved) of one alert; retried with backoff from the database."""

    class Event(models.TextChoices):
        FIRED = "fired"
        RESOLVED = "resolved"

    class Status(models.TextChoices):
        PENDING = "pending"  # waiting for next_attempt_at
        SENDING = "sending"  # claimed by one sender (at claimed_at); a lapsed claim goes back to pending
        SENT = "sent"  # delivered
        FAILED = "failed"  # gave up (attempts exhausted, refused destination, message cannot be built)

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16, choices=Event.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["alert", "event"], name="delivery_one_per_event"),
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="delivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event} delivery of alert {self.alert_id} ({self.status})"


class ExecutionHourlyCount(models.Model):
    """Executions finished in one closed hour, per job owner and status: the dashboard's 24 hours read
    from at most 24 x owners x statuses small rows instead of every execution of the day.

    Filled on read by monitoring.selectors.dashboard (a durable cache of hours that can no longer change,
    like the Redis one of the whole dashboard), hours older than the series pruned there. Each filled hour
    has one marker row (owner null, status "", count 0), so an hour with no executions is not recomputed.
    """

    hour = models.DateTimeField(help_text="the hour's start (UTC)")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=16, blank=True)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "owner", "status"], nulls_distinct=False, name="hourly_count_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.count} {self.status or 'marker'} at {self.hour:%Y-%m-%d %H}:00 (owner {self.owner_id})"
