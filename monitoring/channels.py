"""Where alerts go: a signed webhook (SSRF-guarded like http jobs), e-mail, or the log."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
from collections.abc import Callable
from typing import Any

import requests
from django.conf import settings
from django.core.mail import send_mail

from jobs.executors.http import guarded_session
from jobs.executors.netguard import ForbiddenAddress, url_address_error
from monitoring.models import AlertRule

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Scheduler-Signature"


class DeliveryError(Exception):
    """Sending failed; `permanent` ones are not retried (refused destination, bad target)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def body_sign(*, secret: str, body: bytes) -> str:
    """The signature header value of a webhook body: "sha256=" + hex HMAC-SHA256 with the rule's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(*, secret: str, body: bytes, header: str) -> bool:
    """Whether `header` is the right signature of `body` (for receivers, and the tests)."""
    return hmac.compare_digest(body_sign(secret=secret, body=body), header or "")


def target_error(channel: str, target: str) -> str | None:
    """Why a rule's target is unusable for its channel, or None."""
    if channel == AlertRule.Channel.WEBHOOK:
        if not target:
            return "a webhook needs a URL"
        return url_address_error(target, resolve_names=False)
    if channel == AlertRule.Channel.EMAIL:
        addresses = [a.strip() for a in target.split(",") if a.strip()]
        if not addresses or any("@" not in a for a in addresses):
            return "e-mail needs one or more comma-separated addresses"
    return None


def _webhook(rule: AlertRule, payload: dict[str, Any]) -> None:
    error = url_address_error(rule.target)
    if error:
        raise DeliveryError(f"webhook refused: {error}", permanent=True)
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "job-scheduler-alerts/1",
        SIGNATURE_HEADER: body_sign(secret=rule.secret, body=body),
        "X-Scheduler-Event": payload["event"],
        "X-Scheduler-Delivery": str(payload["delivery_id"]),
    }
    try:
        with guarded_session() as session:
            response = session.post(
                rule.target,
                data=body,
                headers=headers,
                timeout=settings.SCHEDULER_WEBHOOK_TIMEOUT_SECONDS,
                allow_redirects=False,  # a redirect could lead anywhere; receivers answer directly
            )
    except ForbiddenAddress as exc:
        raise DeliveryError(f"webhook refused: {exc}", permanent=True) from exc
    except requests.RequestException as exc:
        raise DeliveryError(f"webhook failed: {type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"webhook answered HTTP {response.status_code}")


def _email(rule: AlertRule, payload: dict[str, Any]) -> None:
    alert = payload["alert"]
    subject = f"[scheduler] {payload['event'].upper()}: {alert['summary']}"[:200]
    body = json.dumps(payload, indent=2, sort_keys=True)
    recipients = [a.strip() for a in rule.target.split(",") if a.strip()]
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"e-mail failed: {type(exc).__name__}: {exc}") from exc


def _log(rule: AlertRule, payload: dict[str, Any]) -> None:
    logger.warning("alert %s (%s): %s", payload["event"], rule.name, payload["alert"]["summary"])


SENDERS: dict[str, Callable[[AlertRule, dict[str, Any]], None]] = {
    AlertRule.Channel.WEBHOOK: _webhook,
    AlertRule.Channel.EMAIL: _email,
    AlertRule.Channel.LOG: _log,
}


def channel_send(*, rule: AlertRule, payload: dict[str, Any]) -> None:
    """Send one alert event through the rule's channel; raises DeliveryError when it did not go out."""
    SENDERS[rule.channel](rule, payload)
