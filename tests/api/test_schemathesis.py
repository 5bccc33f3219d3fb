"""Property-based API test: schemathesis generates requests from /api/v1/schema/ for every operation.

Valid and invalid inputs both: no response may be a 5xx, and every response (status code, content type,
body) must match what the schema documents. Bounded: a few examples per operation, deterministic.
"""

from __future__ import annotations

from typing import Any

import pytest
from knox.models import AuthToken

from tests.schemathesis_support import BOUNDED, CHECKS, api_schema


@pytest.fixture
def operator_token(world, make_user) -> str:
    """An operator's token (every operation reachable), with objects of three users in the database."""
    _, token = AuthToken.objects.create(make_user("olga", "operator"))
    return f"Token {token}"


# Loaded at collection from the project's own WSGI application (no database needed to serve the schema).
# Logging out would revoke the token the rest of the run uses. The monitoring endpoints (alerts, logs,
# an execution's log) are run the same way, with their own data, by tests/monitoring/test_api_schema.py.
schema = api_schema().exclude(
    path_regex=r"^/api/v1/(auth/logout|alert-rules/|alerts/|logs/|executions/\{id\}/log/)"
)


@schema.parametrize()
@BOUNDED
@pytest.mark.usefixtures("in_test_transaction")
def test_api_conforms_to_its_schema(case: Any, operator_token: str) -> None:
    case.call_and_validate(headers={"Authorization": operator_token}, checks=CHECKS)
