"""Alert rules (create, change, delete), the evaluator (fire once per incident, resolve) and deliveries."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from jobs.models import Job
from monitoring.channels import DeliveryError, channel_send, target_error
from monitoring.conditions import JOB_KINDS, Incident, incidents_for, params_clean
from monitoring.models import Alert, AlertDelivery, AlertRule

logger = logging.getLogger(__name__)
RULE_FIELDS = ("name", "kind", "params", "channel", "target", "enabled", "job")
STALE_SENDING = timedelta(minutes=10)


def _rule_validate(rule: AlertRule) -> None:
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
    _rule_validate(rule)
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
    _rule_validate(rule)
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
    logger.info("alert %s fired: %s", alert.pk, incident.summary)
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


def delivery_send(*, delivery_id: int, now: datetime | None = None) -> str | None:
    """Claim one due delivery and send it; returns its new status (None: not due or someone else's)."""
    now = now or timezone.now()
    claimed = AlertDelivery.objects.filter(
        pk=delivery_id, status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(status=AlertDelivery.Status.SENDING, claimed_at=now)
    if not claimed:
        return None
    delivery = AlertDelivery.objects.select_related("alert__rule").get(pk=delivery_id)
    attempts = delivery.attempts + 1
    try:
        channel_send(rule=delivery.alert.rule, payload=_payload(delivery, now))
    except DeliveryError as exc:
        final = exc.permanent or attempts >= settings.SCHEDULER_ALERT_MAX_ATTEMPTS
        status = AlertDelivery.Status.FAILED if final else AlertDelivery.Status.PENDING
        AlertDelivery.objects.filter(pk=delivery_id, status=AlertDelivery.Status.SENDING).update(
            status=status,
            attempts=attempts,
            last_error=str(exc)[:2000],
            next_attempt_at=timezone.now() + timedelta(seconds=backoff_seconds(attempts)),
        )
        logger.warning("alert delivery %s attempt %d failed: %s", delivery_id, attempts, exc)
        return status
    AlertDelivery.objects.filter(pk=delivery_id).update(
        status=AlertDelivery.Status.SENT, attempts=attempts, sent_at=timezone.now(), last_error=""
    )
    return AlertDelivery.Status.SENT


def deliveries_send(*, limit: int = 50, now: datetime | None = None) -> int:
    """Send due deliveries (oldest first); returns how many went out."""
    now = now or timezone.now()
    # A sender that died mid-send may or may not have delivered: never send twice, report it instead.
    AlertDelivery.objects.filter(
        status=AlertDelivery.Status.SENDING, claimed_at__lt=now - STALE_SENDING
    ).update(
        status=AlertDelivery.Status.FAILED,
        last_error="interrupted while sending; not retried (may have arrived)",
    )
    ids = list(
        AlertDelivery.objects.filter(status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(delivery_send(delivery_id=pk, now=now) == AlertDelivery.Status.SENT for pk in ids)
