"""Executors by job kind: each validates its payload and runs it under a RunControl."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import (
    demo_handlers,  # noqa: F401 - registers the demo handlers (usable with SCHEDULER_DEMO_HANDLERS)
    http,
    python,
    shell,
)
from .base import LocalControl, Outcome, RunControl


@dataclass(frozen=True)
class Executor:
    """One job kind: its payload validator and its runner."""

    validate: Callable[[Any], dict[str, str]]
    run: Callable[..., Outcome]


EXECUTORS: dict[str, Executor] = {
    "shell": Executor(validate=shell.validate, run=shell.run),
    "http": Executor(validate=http.validate, run=http.run),
    "python": Executor(validate=python.validate, run=python.run),
}


def executor_for(kind: str) -> Executor:
    """The executor of a job kind (KeyError for an unknown kind)."""
    return EXECUTORS[kind]


def payload_errors(kind: str, payload: Any) -> dict[str, str]:
    """Errors in `payload` for `kind`, keyed by field; unknown kinds are an error on `kind`."""
    if kind not in EXECUTORS:
        return {"kind": f"{kind!r} is not a job kind (one of {', '.join(sorted(EXECUTORS))})"}
    return EXECUTORS[kind].validate(payload)


__all__ = ["EXECUTORS", "Executor", "LocalControl", "Outcome", "RunControl", "executor_for", "payload_errors"]
