"""Executors by job kind: each validates its payload and runs it under a RunControl."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from . import (
    container,
    demo_handlers,  # noqa: F401 - registers the demo handlers (usable with SCHEDULER_DEMO_HANDLERS)
    http,
    python,
    shell,
)
from .base import LocalControl, Outcome, Resources, RunControl

# The label a worker gives its node when its Docker Engine answers (worker/identity.py).
DOCKER_RUNTIME_LABELS = {"runtime": "docker"}


@dataclass(frozen=True)
class Executor:
    """One job kind: its payload validator and its runner."""

    validate: Callable[[Any], dict[str, str]]
    run: Callable[..., Outcome]


EXECUTORS: dict[str, Executor] = {
    "shell": Executor(validate=shell.validate, run=shell.run),
    "http": Executor(validate=http.validate, run=http.run),
    "python": Executor(validate=python.validate, run=python.run),
    "container": Executor(validate=container.validate, run=container.run),
}


def container_kinds() -> tuple[str, ...]:
    """The kinds whose runs need a node with a container engine (shell too, when sandboxed)."""
    return ("container", "shell") if settings.SCHEDULER_SHELL_SANDBOX == "container" else ("container",)


def required_labels(kind: str) -> dict[str, str]:
    """Labels a node must have for a job of `kind`, besides the job's own node_selector."""
    return dict(DOCKER_RUNTIME_LABELS) if kind in container_kinds() else {}


def executor_for(kind: str) -> Executor:
    """The executor of a job kind (KeyError for an unknown kind)."""
    return EXECUTORS[kind]


def payload_errors(kind: str, payload: Any) -> dict[str, str]:
    """Errors in `payload` for `kind`, keyed by field; unknown kinds are an error on `kind`."""
    if kind not in EXECUTORS:
        return {"kind": f"{kind!r} is not a job kind (one of {', '.join(sorted(EXECUTORS))})"}
    return EXECUTORS[kind].validate(payload)


__all__ = [
    "DOCKER_RUNTIME_LABELS",
    "EXECUTORS",
    "Executor",
    "LocalControl",
    "Outcome",
    "Resources",
    "RunControl",
    "container_kinds",
    "executor_for",
    "payload_errors",
    "required_labels",
]
