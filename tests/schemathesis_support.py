"""What every schemathesis run over /api/v1/schema/ shares: the schema, its checks and bounds."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from scheduler_project.wsgi import application

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# Bounded and deterministic: a few examples per operation, the same ones on every run.
BOUNDED = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def api_schema():
    """The project's schema, loaded from its own WSGI application (no database needed to serve it)."""
    # (schemathesis.pytest.from_fixture would load it per test, but its lazy mode breaks on pytest 9.2.)
    return schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
