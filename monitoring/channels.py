"""Where alerts go: a signed webhook (SSRF-guarded like http jobs), e-mail, or the log."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import smtplib
from collections.abc import Callable
from typing import Any

import requests
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from jobs.executors.http import guarded_session
from jobs.executors.netguard import ForbiddenAddress, url_address_error
from monitoring.models import AlertRule

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Scheduler-Signature"
DELIVERY_HEADER = "X-Scheduler-Delivery"
# Never raw in a header or a log line: C0 controls (CR, LF, NUL, ESC ...), DEL, C1 controls (NEL among them)
# and the Unicode line and paragraph separators. Job names, errors and output are written by jobs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BLANK_RUN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_ESCAPES = {"\r": r"\r", "\n": r"\n", "\t": r"\t"}


class DeliveryError(Exception):
    """Sending failed; `permanent` ones are not retried (refused destination, bad target)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _str(value: object) -> str:
    # Lone surrogates (output decoded with surrogateescape) cannot be encoded into a header or most log files.
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return _ESCAPES.get(match[0]) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def header_text(value: object, *, limit: int = 200) -> str:
    """`value` as one header-safe line: runs of blanks and control characters one space, at most `limit`."""
    return _bounded(_BLANK_RUN.sub(" ", _str(value)).strip(), limit)


def log_text(value: object, *, limit: int = 1000) -> str:
    r"""`value` as part of one log line: control characters escaped (\r, \n, \x1b), at most `limit` long."""
    return _bounded(_CONTROL.sub(_escape, _str(value)), limit)


def error_text(exc: BaseException) -> str:
    """An exception as a one-line reason: its type and message, control characters escaped."""
    return log_text(f"{type(exc).__name__}: {exc}", limit=1500)


def email_timeout_seconds() -> float:
    """How long one SMTP operation may wait: EMAIL_TIMEOUT, else the webhook timeout (never unbounded)."""
    return float(settings.EMAIL_TIMEOUT or settings.SCHEDULER_WEBHOOK_TIMEOUT_SECONDS)


def send_timeout_seconds() -> float:
    """The longest one network operation of any channel waits (a connect, a read, an SMTP reply)."""
    return max(float(settings.SCHEDULER_WEBHOOK_TIMEOUT_SECONDS), email_timeout_seconds())


def body_sign(*, secret: str, body: bytes) -> str:
    """The signature header value of a webhook body: "sha256=" + hex HMAC-SHA256 with the rule's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(*, secret: str, body: bytes, header: str) -> bool:
    """Whether `header` is the right signature of `body` (for receivers, and the tests)."""
    return hmac.compare_digest(body_sign(secret=secret, body=body), header or "")


def _addresses(target: str) -> list[str]:
    return [a.strip() for a in target.split(",") if a.strip()]


def target_error(channel: str, target: str) -> str | None:
    """Why a rule's target is unusable for its channel, or None."""
    if channel == AlertRule.Channel.WEBHOOK:
        if not target:
            return "a webhook needs a URL"
        return url_address_error(target, resolve_names=False)
    if channel == AlertRule.Channel.EMAIL:
        addresses = _addresses(target)
        if not addresses or any("@" not in a or _CONTROL.search(a) for a in addresses):
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
        DELIVERY_HEADER: str(payload["delivery_id"]),  # the same on every attempt: receivers dedupe on it
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
        raise DeliveryError(f"webhook failed: {error_text(exc)}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"webhook answered HTTP {response.status_code}")


def _email(rule: AlertRule, payload: dict[str, Any]) -> None:
    subject = header_text(f"[scheduler] {payload['event'].upper()}: {payload['alert']['summary']}")
    # JSON escapes every control character in a string, so job text cannot shape the body's lines either.
    body = json.dumps(payload, indent=2, sort_keys=True)
    message = EmailMessage(
        subject,
        body,
        settings.DEFAULT_FROM_EMAIL,
        _addresses(rule.target),
        headers={"X-Scheduler-Event": payload["event"], DELIVERY_HEADER: str(payload["delivery_id"])},
    )
    try:
        message.message()  # Django refuses a header value with a newline (BadHeaderError) before connecting
    except ValueError as exc:  # the same on every attempt: not retried
        raise DeliveryError(f"e-mail could not be built: {error_text(exc)}", permanent=True) from exc
    try:
        get_connection(fail_silently=False, timeout=email_timeout_seconds()).send_messages([message])
    except (smtplib.SMTPException, OSError) as exc:  # OSError: refused, reset, timed out, TLS
        raise DeliveryError(f"e-mail failed: {error_text(exc)}") from exc


def _log(rule: AlertRule, payload: dict[str, Any]) -> None:
    logger.warning(
        "alert %s (%s): %s", payload["event"], log_text(rule.name), log_text(payload["alert"]["summary"])
    )


SENDERS: dict[str, Callable[[AlertRule, dict[str, Any]], None]] = {
    AlertRule.Channel.WEBHOOK: _webhook,
    AlertRule.Channel.EMAIL: _email,
    AlertRule.Channel.LOG: _log,
}


def channel_send(*, rule: AlertRule, payload: dict[str, Any]) -> None:
    """Send one alert event through the rule's channel; raises DeliveryError when it did not go out."""
    sender = SENDERS.get(rule.channel)
    if sender is None:
        raise DeliveryError(f"unknown channel {log_text(rule.channel)!r}", permanent=True)
    try:
        sender(rule, payload)
    except DeliveryError:
        raise
    except Exception as exc:
        # Whatever else one delivery runs into is that delivery's failed attempt, recorded with its reason
        # and retried: it must not escape into the loop and hold up the deliveries after it.
        raise DeliveryError(f"{rule.channel} failed: {error_text(exc)}") from exc
