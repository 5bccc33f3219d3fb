"""The monitoring API against its own OpenAPI schema (schemathesis, as tests/api does for the rest)."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from knox.models import AuthToken

from jobs.models import Execution
from monitoring.services import alert_rule_create, alerts_evaluate, log_append
from tests.factories import JobFactory, NodeFactory
from tests.schemathesis_support import BOUNDED, CHECKS, api_schema


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


schema = api_schema().include(
    path_regex=r"^/api/v1/(alert-rules/|alerts/|logs/|metrics/|executions/\{id\}/log/)"
)


@schema.parametrize()
@BOUNDED
@pytest.mark.usefixtures("in_test_transaction")
def test_monitoring_api_conforms_to_its_schema(case: Any, operator_token: str) -> None:
    case.call_and_validate(headers={"Authorization": operator_token}, checks=CHECKS)
