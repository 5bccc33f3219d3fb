"""The monitoring API against its own OpenAPI schema (schemathesis, as tests/api does for the rest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from knox.models import AuthToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.models import Execution
from monitoring.services import alert_rule_create, alerts_evaluate, log_append
from scheduler_project.wsgi import application
from tests.factories import JobFactory, NodeFactory

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def in_test_transaction(db) -> Iterator[None]:
    """Let the project's WSGI application run inside the test's transaction (as Django's test client does)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def operator_token(make_user) -> str:
    """An operator's token, with an execution, its output, a rule and a firing alert in the database."""
    job = JobFactory.create(owner=make_user("alice", "submitter"))
    execution = Execution.objects.create(job=job, scheduled_for=timezone.now(), status="failed",
                                         finished_at=timezone.now(), output="boom\n")  # fmt: skip
    log_append(execution_id=execution.pk, text="streamed\n")
    NodeFactory(status="offline")
    alert_rule_create(name="offline", kind="node_offline", channel="log")
    alerts_evaluate()
    _, token = AuthToken.objects.create(make_user("olga", "operator"))
    return f"Token {token}"


schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application).include(
    path_regex=r"^/api/v1/(alert-rules/|alerts/|logs/|metrics/|executions/\{id\}/log/)"
)


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_monitoring_api_conforms_to_its_schema(
    case: Any, operator_token: str, in_test_transaction: None
) -> None:
    case.call_and_validate(headers={"Authorization": operator_token}, checks=CHECKS)
