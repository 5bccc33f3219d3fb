"""Writes of the monitoring app: output capture, retention, alert rules, evaluation and delivery."""

from .alerts import (
    alert_rule_create,
    alert_rule_delete,
    alert_rule_evaluate,
    alert_rule_update,
    alert_rule_validate,
    alerts_evaluate,
    deliveries_send,
    delivery_send,
)
from .logs import ExecutionLogWriter, executions_prune, log_append

__all__ = [
    "ExecutionLogWriter",
    "alert_rule_create",
    "alert_rule_delete",
    "alert_rule_evaluate",
    "alert_rule_update",
    "alert_rule_validate",
    "alerts_evaluate",
    "deliveries_send",
    "delivery_send",
    "executions_prune",
    "log_append",
]
