"""Reads of the monitoring app: execution output, metrics and dashboard summaries."""

from .logs import LogSlice, log_excerpt, log_read, logs_query

__all__ = ["LogSlice", "log_excerpt", "log_read", "logs_query"]
