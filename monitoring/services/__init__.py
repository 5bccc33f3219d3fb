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
from .history import executions_prune, history_partitions_ensure, history_prune
from .logs import ExecutionLogWriter, log_append

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
    "history_partitions_ensure",
    "history_prune",
    "log_append",
]
