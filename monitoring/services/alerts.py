"""Alert rules (create, change, delete), the evaluator (fire once per incident, resolve) and deliveries."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import Job
from monitoring.channels import DeliveryError, channel_send, log_text, send_timeout_seconds, target_error
from monitoring.conditions import JOB_KINDS, Incident, incidents_for, params_clean
from monitoring.models import Alert, AlertDelivery, AlertRule

logger = logging.getLogger(__name__)
RULE_FIELDS = ("name", "kind", "params", "channel", "target", "enabled", "job")
MIN_SENDING_LEASE = timedelta(minutes=2)
INTERRUPTED = "the sender stopped while sending (died or lost the database); it may have arrived"


def alert_rule_validate(rule: AlertRule) -> None:
    """Check a rule as the API and the admin save it (params get their defaults); a ValidationError names
    each bad field ("params.<name>" for a param)."""
    errors: dict[str, str] = {}
    if not (rule.name or "").strip():
        errors["name"] = "is required"
    if rule.channel not in AlertRule.Channel.values:
        errors["channel"] = f"must be one of {', '.join(AlertRule.Channel.values)}"
    else:
        error = target_error(rule.channel, rule.target or "")
        if error:
            errors["target"] = error
    rule.params, param_errors = params_clean(rule.kind, rule.params if rule.params is not None else {})
    errors.update(param_errors)
    if rule.job_id and rule.kind in AlertRule.Kind.values and rule.kind not in JOB_KINDS:
        errors["job"] = f"kind {rule.kind} is not about one job"
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def alert_rule_create(*, actor: Any = None, **fields: Any) -> AlertRule:
    """Validate and create a rule (a fresh webhook secret is generated)."""
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise ValidationError({name: "unknown field" for name in unknown})
    if isinstance(fields.get("job"), int):
        fields["job"] = Job.objects.filter(pk=fields["job"]).first() or _no_job(fields["job"])
    rule = AlertRule(created_by=actor if getattr(actor, "pk", None) else None, **fields)
    alert_rule_validate(rule)
    rule.save()
    return rule


def _no_job(pk: int) -> Job:
    raise ValidationError({"job": f"job {pk} does not exist"})


@transaction.atomic
def alert_rule_update(*, rule: AlertRule, **changes: Any) -> AlertRule:
    """Change a rule's fields (validated as a whole); its open alerts stay as they are."""
    unknown = set(changes) - set(RULE_FIELDS)
    if unknown:
        raise ValidationError({name: "unknown field" for name in unknown})
    rule = AlertRule.objects.select_for_update().get(pk=rule.pk)
    for name, value in changes.items():
        setattr(rule, name, value)
    alert_rule_validate(rule)
    rule.save()
    return rule


@transaction.atomic
def alert_rule_delete(*, rule: AlertRule) -> None:
    """Delete a rule and its alert history."""
    AlertRule.objects.filter(pk=rule.pk).delete()


def _alert_fire(rule: AlertRule, key: str, incident: Incident, now: datetime) -> bool:
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule, incident_key=key[:255], summary=incident.summary[:500], details=incident.details
            )
            AlertDelivery.objects.create(alert=alert, event=AlertDelivery.Event.FIRED, next_attempt_at=now)
    except IntegrityError:
        return False  # another evaluator fired this incident first
    logger.info("alert %s fired: %s", alert.pk, log_text(incident.summary))
    return True


def _alert_resolve(alert: Alert, now: datetime) -> bool:
    with transaction.atomic():
        if not Alert.objects.filter(pk=alert.pk, state=Alert.State.FIRING).update(
            state=Alert.State.RESOLVED, resolved_at=now
        ):
            return False
        AlertDelivery.objects.get_or_create(
            alert=alert, event=AlertDelivery.Event.RESOLVED, defaults={"next_attempt_at": now}
        )
    logger.info("alert %s resolved", alert.pk)
    return True


def alert_rule_evaluate(*, rule: AlertRule, now: datetime | None = None) -> tuple[int, int]:
    """Fire new incidents of one rule and resolve cleared ones; returns (fired, resolved)."""
    now = now or timezone.now()
    active = incidents_for(rule, now)
    firing = {a.incident_key: a for a in Alert.objects.filter(rule=rule, state=Alert.State.FIRING)}
    fired = sum(_alert_fire(rule, key, inc, now) for key, inc in active.items() if key not in firing)
    resolved = sum(_alert_resolve(alert, now) for key, alert in firing.items() if key not in active)
    return fired, resolved


def alerts_evaluate(*, now: datetime | None = None) -> tuple[int, int]:
    """Evaluate every enabled rule; one rule's error is logged and does not stop the others."""
    fired = resolved = 0
    for rule in AlertRule.objects.filter(enabled=True).order_by("pk"):
        try:
            f, r = alert_rule_evaluate(rule=rule, now=now)
        except (OperationalError, InterfaceError):
            raise  # the database went away: no other rule can be evaluated either; the next tick does it
        except Exception:  # a broken rule (or a broker outage for queue rules) must not stop the rest
            logger.exception("alert rule %s (%s) could not be evaluated", rule.pk, rule.kind)
            continue
        fired, resolved = fired + f, resolved + r
    return fired, resolved


def _payload(delivery: AlertDelivery, now: datetime) -> dict[str, Any]:
    alert, rule = delivery.alert, delivery.alert.rule
    return {
        "event": delivery.event,
        "delivery_id": delivery.pk,
        "sent_at": now.isoformat(),
        "alert": {
            "id": alert.pk,
            "incident_key": alert.incident_key,
            "state": alert.state,
            "summary": alert.summary,
            "details": alert.details,
            "fired_at": alert.fired_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        },
        "rule": {"id": rule.pk, "name": rule.name, "kind": rule.kind, "job_id": rule.job_id},
    }


def backoff_seconds(attempts: int) -> float:
    """Delay before the next try after `attempts` failed ones: base * 2^(attempts-1), capped."""
    base = float(settings.SCHEDULER_ALERT_BACKOFF_SECONDS)
    return min(base * 2 ** max(attempts - 1, 0), float(settings.SCHEDULER_ALERT_BACKOFF_MAX_SECONDS))


def sending_lease() -> timedelta:
    """How long a claim (`sending`) holds: far past what a live send takes, so only a dead sender's lapses."""
    return max(MIN_SENDING_LEASE, timedelta(seconds=10 * send_timeout_seconds()))


def _delivery_claim(delivery_id: int, now: datetime) -> datetime | None:
    """pending -> sending, or None; a row another transaction holds locked is skipped, never waited for."""
    claimed_at = timezone.now()
    with transaction.atomic():
        due = AlertDelivery.objects.filter(
            pk=delivery_id, status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now
        ).select_for_update(skip_locked=True)
        claimed = AlertDelivery.objects.filter(pk__in=due.values("pk")).update(
            status=AlertDelivery.Status.SENDING, claimed_at=claimed_at
        )
    return claimed_at if claimed else None


def _attempt_failed(
    delivery_id: int,
    claimed_at: datetime | None,
    attempts: int,
    reason: str,
    *,
    permanent: bool,
    retry_at: datetime,
) -> str | None:
    """Record a failed attempt of the claim `claimed_at`: pending again (retry_at), or failed when final."""
    final = permanent or attempts >= settings.SCHEDULER_ALERT_MAX_ATTEMPTS
    status = AlertDelivery.Status.FAILED if final else AlertDelivery.Status.PENDING
    # claimed_at fences the claim: a sender whose claim lapsed and was taken over changes nothing.
    if not AlertDelivery.objects.filter(
        pk=delivery_id, status=AlertDelivery.Status.SENDING, claimed_at=claimed_at
    ).update(
        status=status, attempts=attempts, last_error=log_text(reason, limit=2000), next_attempt_at=retry_at
    ):
        return None
    logger.warning(
        "alert delivery %s attempt %d failed (%s): %s", delivery_id, attempts, status, log_text(reason)
    )
    return status


def _delivery_sent(delivery_id: int, claimed_at: datetime, attempts: int) -> None:
    # It went out: record that, unless another sender holds a newer claim (it sends and records it itself).
    AlertDelivery.objects.filter(pk=delivery_id).exclude(status=AlertDelivery.Status.SENT).exclude(
        Q(status=AlertDelivery.Status.SENDING) & ~Q(claimed_at=claimed_at)
    ).update(status=AlertDelivery.Status.SENT, attempts=attempts, sent_at=timezone.now(), last_error="")


def delivery_send(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """Claim one due delivery and send it; returns its new status (None: not due or someone else's)."""
    now = now or timezone.now()
    claimed_at = _delivery_claim(delivery_id, now)
    if claimed_at is None:
        return None
    delivery = AlertDelivery.objects.select_related("alert__rule").filter(pk=delivery_id).first()
    if delivery is None:
        return None  # deleted with its rule since the claim
    attempts = delivery.attempts + 1
    try:
        channel_send(rule=delivery.alert.rule, payload=_payload(delivery, now))
    except DeliveryError as exc:
        retry_at = timezone.now() + timedelta(seconds=backoff_seconds(attempts))
        return _attempt_failed(
            delivery_id, claimed_at, attempts, str(exc), permanent=exc.permanent, retry_at=retry_at
        )
    _delivery_sent(delivery_id, claimed_at, attempts)
    return AlertDelivery.Status.SENT


def deliveries_reclaim(*, now: datetime | None = None) -> int:
    """Put back the deliveries whose sender died mid-send (claim older than the lease), the attempt counted:
    at least once, so one may arrive twice; returns how many."""
    now = now or timezone.now()
    stale = AlertDelivery.objects.filter(
        status=AlertDelivery.Status.SENDING, claimed_at__lt=now - sending_lease()
    ).values_list("pk", "claimed_at", "attempts")
    # The lease was the wait: due again at once (one that kills its sender every time still ends failed).
    return sum(
        _attempt_failed(pk, claimed_at, attempts + 1, INTERRUPTED, permanent=False, retry_at=now) is not None
        for pk, claimed_at, attempts in stale
    )


def deliveries_send(*, limit: int = 50, now: datetime | None = None) -> int:
    """Send due deliveries (oldest first), each on its own: one that fails does not hold up the others;
    returns how many went out."""
    now = now or timezone.now()
    deliveries_reclaim(now=now)
    ids = list(
        AlertDelivery.objects.filter(status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    sent = 0
    for pk in ids:
        try:
            sent += delivery_send(delivery_id=pk, now=now) == AlertDelivery.Status.SENT
        except (OperationalError, InterfaceError):
            raise  # the database went away: no other delivery can be recorded either; the next tick does it
        except Exception:  # a bug around one delivery: its claim lapses and is retried; the others go on
            logger.exception("alert delivery %s could not be sent", pk)
    return sent
