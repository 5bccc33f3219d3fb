"""One bad alert delivery fails alone: job text cannot inject mail headers or log lines, a delivery that
fails, raises, hangs or is locked does not hold up the others, and one whose sender died is sent again."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import socketserver
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, given, strategies
from hypothesis import settings as hypothesis_settings

from jobs.models import Execution, Job
from monitoring import channels
from monitoring.channels import DELIVERY_HEADER, DeliveryError, header_text, log_text, signature_valid
from monitoring.models import AlertDelivery, AlertRule
from monitoring.services import alert_rule_create, alerts_evaluate, deliveries_send
from monitoring.services.alerts import INTERRUPTED, deliveries_reclaim, sending_lease
from monitoring.tasks import evaluate_alerts
from nodes.models import Node
from tests.conftest import Proc, database_connect, subprocess_env, wait_for
from tests.factories import JobFactory, NodeFactory

POISON = "disk full\r\nBcc: victim@example.com\r\n"
SEND_ONCE = "from monitoring.services import deliveries_send; deliveries_send()"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# --- a real SMTP server on 127.0.0.1 (the wire protocol, not Django's locmem outbox) ---------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class SMTPListener:
    """Records each accepted message with its envelope; refuses `refuse` recipients (550); `hang`: accepts
    connections and never answers."""

    mails: list[Mail] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    hang: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def envelopes(self) -> list[list[str]]:
        with self.lock:
            return [mail.recipients for mail in self.mails]

    def to(self, address: str) -> Mail:
        with self.lock:
            (mail,) = [m for m in self.mails if address in m.recipients]
        return mail


def _address(argument: str) -> str:
    found = re.search(r"<([^>]*)>", argument)
    return found[1] if found else argument


class _SMTPHandler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        listener: SMTPListener = self.server.listener  # type: ignore[attr-defined]
        if listener.hang:
            listener.released.wait(30)
            return
        self.reply("220 test ESMTP")
        sender, recipients = "", list[str]()
        for raw in self.rfile:
            verb, _, argument = raw.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 test")
            elif verb == "MAIL":
                sender, recipients = _address(argument), []
                self.reply("250 ok")
            elif verb == "RCPT" and _address(argument) in listener.refuse:
                self.reply("550 5.1.1 no such mailbox")
            elif verb == "RCPT":
                recipients.append(_address(argument))
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                with listener.lock:
                    listener.mails.append(Mail(sender, recipients, self._data()))
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok" if verb in ("RSET", "NOOP") else "502 not implemented")

    def _data(self) -> bytes:
        lines = []
        for raw in self.rfile:
            if raw == b".\r\n":
                break
            lines.append(raw[1:] if raw.startswith(b"..") else raw)  # undo dot-stuffing
        return b"".join(lines)


@pytest.fixture
def smtp(settings) -> Iterator[SMTPListener]:
    """The listener, with Django's real SMTP backend pointed at it."""
    listener = SMTPListener()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.daemon_threads = True
    server.listener = listener  # type: ignore[attr-defined]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.server_address[1]
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 10
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield listener
    listener.released.set()
    server.shutdown()
    server.server_close()


# --- a webhook receiver whose first request hangs (the sender is killed while it waits) ------------------


@dataclass
class HangingReceiver:
    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def hanging_webhook(settings) -> Iterator[HangingReceiver]:
    settings.SCHEDULER_HTTP_ALLOWLIST = ["127.0.0.1"]
    receiver = HangingReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.requests.append((dict(self.headers.items()), body))
                first = len(receiver.requests) == 1
            if first:  # it arrived; the answer never comes while the sender lives
                receiver.released.wait(60)
                return
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield receiver
    receiver.released.set()
    server.shutdown()
    server.server_close()


def _failed_run(job: Job, error: str) -> Execution:
    now = timezone.now()
    return Execution.objects.create(
        job=job,
        scheduled_for=now,
        status=Execution.Status.FAILED,
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        error=error,
    )


def _by_rule() -> dict[str, AlertDelivery]:
    return {d.alert.rule.name: d for d in AlertDelivery.objects.select_related("alert__rule")}


def _states() -> dict[str, tuple[str, int]]:
    return {name: (d.status, d.attempts) for name, d in _by_rule().items()}


# --- the attack of issue 11 -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_job_error_text_cannot_inject_mail_headers_nor_hold_up_an_unrelated_alert(smtp, caplog):
    job = JobFactory(name="nightly-report")
    alert_rule_create(
        name="failures", kind="execution_failed", job=job, channel="email", target="oncall@example.com"
    )
    alert_rule_create(name="nodes", kind="node_offline", channel="email", target="ops@example.com")
    _failed_run(job, POISON)  # its alert is due first, then the unrelated one
    NodeFactory(status=Node.Status.OFFLINE)

    with caplog.at_level(logging.INFO, logger="monitoring"):
        evaluate_alerts()  # one tick of the periodic task, as beat sends it

    assert _states() == {"failures": ("sent", 1), "nodes": ("sent", 1)}  # both on the first pass
    assert not AlertDelivery.objects.filter(status=AlertDelivery.Status.SENDING).exists()
    # The envelope: the victim was never a recipient.
    assert smtp.envelopes() == [["oncall@example.com"], ["ops@example.com"]]
    poisoned, unrelated = smtp.to("oncall@example.com"), smtp.to("ops@example.com")
    headers = poisoned.data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^(bcc|cc):", headers, re.IGNORECASE | re.MULTILINE)
    assert sorted(poisoned.message.keys()) == sorted(unrelated.message.keys())  # no extra header
    subject = str(poisoned.message["Subject"])
    assert not CONTROL.search(subject)
    assert subject.endswith("failed: disk full Bcc: victim@example.com")  # harmless text in one line
    assert poisoned.message[DELIVERY_HEADER] == str(_by_rule()["failures"].pk)
    body = poisoned.message.get_body().get_content()  # type: ignore[union-attr]
    assert POISON in json.loads(body)["alert"]["summary"]  # kept verbatim, JSON-escaped
    assert not re.search(r"^\s*Bcc:", body, re.MULTILINE)
    # Log lines: one line each, the control characters escaped.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("monitoring")]
    assert any(r"disk full\r\nBcc: victim@example.com\r\n" in line for line in lines)
    assert not [line for line in lines if CONTROL.search(line)]


@pytest.mark.django_db
def test_a_message_that_cannot_be_built_fails_alone_at_once_with_its_reason(smtp):
    legacy = alert_rule_create(name="legacy", kind="node_offline", channel="email", target="a@example.com")
    # A target stored before targets were checked for control characters (saving it now is refused).
    AlertRule.objects.filter(pk=legacy.pk).update(target="a@example.com\r\nBcc: victim@example.com")
    alert_rule_create(name="nodes", kind="node_offline", channel="email", target="ops@example.com")
    NodeFactory(status=Node.Status.OFFLINE)
    evaluate_alerts()
    assert _states() == {"legacy": ("failed", 1), "nodes": ("sent", 1)}
    reason = _by_rule()["legacy"].last_error
    assert reason.startswith("e-mail could not be built: BadHeaderError: ")
    assert not CONTROL.search(reason)
    evaluate_alerts()  # the same message on every attempt: not retried
    assert _states() == {"legacy": ("failed", 1), "nodes": ("sent", 1)}
    assert smtp.envelopes() == [["ops@example.com"]]


@pytest.mark.django_db
def test_email_targets_with_control_characters_are_refused():
    with pytest.raises(ValidationError) as excinfo:
        alert_rule_create(
            name="bad", kind="node_offline", channel="email", target="a@example.com\r\nBcc: v@example.com"
        )
    assert "target" in excinfo.value.message_dict


# --- every other way one delivery can fail ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_refused_mail_is_retried_with_backoff_then_failed_and_holds_up_nothing(smtp, settings):
    settings.SCHEDULER_ALERT_MAX_ATTEMPTS = 3
    settings.SCHEDULER_ALERT_BACKOFF_SECONDS = 30
    smtp.refuse.add("gone@example.com")
    alert_rule_create(name="refused", kind="node_offline", channel="email", target="gone@example.com")
    alert_rule_create(name="nodes", kind="node_offline", channel="email", target="ops@example.com")
    NodeFactory(status=Node.Status.OFFLINE)
    before = timezone.now()
    evaluate_alerts()
    assert _states() == {"refused": ("pending", 1), "nodes": ("sent", 1)}
    refused = _by_rule()["refused"]
    assert "SMTPRecipientsRefused" in refused.last_error
    assert "550" in refused.last_error
    assert refused.next_attempt_at >= before + timedelta(seconds=29)  # waits in the database
    for expected in [("pending", 2), ("failed", 3)]:
        deliveries_send(now=refused.next_attempt_at)
        refused.refresh_from_db()
        assert (refused.status, refused.attempts) == expected
    assert "550" in refused.last_error
    assert smtp.envelopes() == [["ops@example.com"]]


@pytest.mark.django_db
@pytest.mark.timeout(60)
def test_a_mail_server_that_never_answers_times_out_and_the_next_alert_goes(smtp, settings, caplog):
    settings.EMAIL_TIMEOUT = None  # unset: the alert channel still bounds every SMTP operation
    settings.SCHEDULER_WEBHOOK_TIMEOUT_SECONDS = 1
    smtp.hang = True
    alert_rule_create(name="mail", kind="node_offline", channel="email", target="ops@example.com")
    alert_rule_create(name="log", kind="node_offline", channel="log")
    node = NodeFactory(status=Node.Status.OFFLINE)
    with caplog.at_level(logging.WARNING, logger="monitoring.channels"):
        evaluate_alerts()
    assert _states() == {"mail": ("pending", 1), "log": ("sent", 1)}
    assert "timed out" in _by_rule()["mail"].last_error
    assert f"alert fired (log): node {node.name} is offline" in [r.getMessage() for r in caplog.records]


@pytest.mark.django_db
def test_anything_a_channel_raises_is_a_failed_attempt_with_its_reason(monkeypatch, webhook):
    def broken(rule: AlertRule, payload: dict) -> None:
        raise RuntimeError("backend bug\r\nX-Injected: yes")

    monkeypatch.setitem(channels.SENDERS, AlertRule.Channel.LOG, broken)
    alert_rule_create(name="log", kind="node_offline", channel="log")
    alert_rule_create(name="hook", kind="node_offline", channel="webhook", target=webhook.url)
    node = NodeFactory(status=Node.Status.OFFLINE)
    alerts_evaluate()
    deliveries_send()
    assert _states() == {"log": ("pending", 1), "hook": ("sent", 1)}
    assert _by_rule()["log"].last_error == r"log failed: RuntimeError: backend bug\r\nX-Injected: yes"
    assert webhook.events() == [("fired", f"node:{node.name}")]


# --- a sender that died mid-send, a lapsed claim, a locked row ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_delivery_whose_sender_was_killed_mid_send_is_sent_again_not_failed(hanging_webhook, tmp_path):
    rule = alert_rule_create(name="hook", kind="node_offline", channel="webhook", target=hanging_webhook.url)
    NodeFactory(status=Node.Status.OFFLINE)
    alerts_evaluate()
    delivery = AlertDelivery.objects.get()
    sender = Proc(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from monitoring.services import deliveries_send as s; s()",
        ],
        subprocess_env(SCHEDULER_HTTP_ALLOWLIST="127.0.0.1", SCHEDULER_WEBHOOK_TIMEOUT_SECONDS="120"),
        tmp_path / "sender.log",
    )
    try:
        wait_for(lambda: hanging_webhook.requests or not sender.alive(), timeout=120, what="the POST")
        assert hanging_webhook.requests, f"the sender ended without posting; log:\n{sender.log()[-3000:]}"
        sender.kill_group()  # SIGKILL while it waits for the answer: no chance to record anything
    finally:
        sender.stop()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sending", 0)
    assert deliveries_send() == 0  # within the lease: it might still be sending, so not resent yet
    after_lease = delivery.claimed_at + sending_lease() + timedelta(seconds=1)
    assert deliveries_reclaim(now=after_lease) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, INTERRUPTED)
    assert deliveries_send(now=after_lease) == 1  # due at once: the lease was the wait
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    # At least once: the receiver saw it twice, with the same delivery id to dedupe on, both signed.
    assert [headers[DELIVERY_HEADER] for headers, _ in hanging_webhook.requests] == [str(delivery.pk)] * 2
    rule.refresh_from_db()
    assert all(
        signature_valid(secret=rule.secret, body=body, header=headers["X-Scheduler-Signature"])
        for headers, body in hanging_webhook.requests
    )


@pytest.mark.django_db
def test_a_delivery_that_stops_its_sender_every_time_ends_failed(settings):
    settings.SCHEDULER_ALERT_MAX_ATTEMPTS = 2
    alert_rule_create(name="log", kind="node_offline", channel="log")
    NodeFactory(status=Node.Status.OFFLINE)
    alerts_evaluate()
    delivery = AlertDelivery.objects.get()
    for expected in [("pending", 1), ("failed", 2)]:
        lapsed = timezone.now() - sending_lease() - timedelta(seconds=1)
        AlertDelivery.objects.filter(pk=delivery.pk).update(status="sending", claimed_at=lapsed)
        assert deliveries_reclaim() == 1
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.last_error) == (*expected, INTERRUPTED)


@pytest.mark.django_db
@pytest.mark.parametrize("outcome", ["sent", "failed"])
def test_a_sender_whose_claim_lapsed_and_was_taken_over_records_nothing(monkeypatch, outcome):
    alert_rule_create(name="log", kind="node_offline", channel="log")
    NodeFactory(status=Node.Status.OFFLINE)
    alerts_evaluate()
    newer = timezone.now() + timedelta(hours=1)

    def taken_over_while_sending(rule: AlertRule, payload: dict) -> None:
        AlertDelivery.objects.filter(pk=payload["delivery_id"]).update(attempts=1, claimed_at=newer)
        if outcome == "failed":
            raise DeliveryError("refused")

    monkeypatch.setitem(channels.SENDERS, AlertRule.Channel.LOG, taken_over_while_sending)
    deliveries_send()
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.claimed_at) == ("sending", 1, newer)


@pytest.mark.django_db(transaction=True)
def test_a_delivery_locked_by_another_transaction_is_skipped_not_waited_for(webhook):
    alert_rule_create(name="log", kind="node_offline", channel="log")
    alert_rule_create(name="hook", kind="node_offline", channel="webhook", target=webhook.url)
    NodeFactory(status=Node.Status.OFFLINE)
    alerts_evaluate()
    locked = _by_rule()["log"]
    with database_connect() as other, other.transaction():
        other.execute("SELECT 1 FROM monitoring_alertdelivery WHERE id = %s FOR UPDATE", [locked.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # a sender that waited would fail here, not hang
            try:
                assert deliveries_send() == 1
            finally:
                cursor.execute("RESET lock_timeout")
    assert _states() == {"log": ("pending", 0), "hook": ("sent", 1)}
    assert deliveries_send() == 1  # released: the next pass sends it
    assert _states() == {"log": ("sent", 1), "hook": ("sent", 1)}


# --- the sanitizers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "header", "logged"),
    [
        ("plain text, café ✓", "plain text, café ✓", "plain text, café ✓"),
        (POISON, "disk full Bcc: victim@example.com", r"disk full\r\nBcc: victim@example.com\r\n"),
        ("a\rb\nc\x00d\x1b[31me\x7ff\tg", "a b c d [31me f g", r"a\rb\nc\x00d\x1b[31me\x7ff\tg"),
        ("next\x85line\u2028sep\u2029para", "next line sep para", r"next\x85line\u2028sep\u2029para"),
        ("lone \udcff surrogate", "lone ? surrogate", "lone ? surrogate"),
    ],
)
def test_header_and_log_text_never_carry_control_characters(raw, header, logged):
    assert header_text(raw) == header
    assert log_text(raw) == logged


def test_header_and_log_text_are_bounded():
    assert header_text("x" * 500) == "x" * 199 + "\u2026"
    assert len(log_text("\n" * 5000)) == 1000
    assert len(header_text("  " + "y" * 300, limit=50)) == 50


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(strategies.text())
def test_no_text_survives_as_more_than_one_line(text):
    header, logged = header_text(text), log_text(text)
    assert not CONTROL.search(header)
    assert not re.search(r"\s", header.replace(" ", ""))  # no blank but the plain space
    assert len(header) <= 200
    assert not CONTROL.search(logged)
    assert len(logged) <= 1000
