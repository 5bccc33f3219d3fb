"""Who this worker is: its node name (celery hostname NAME@HOST), its incarnation (a fresh boot id at each
start), capacity, address, and registration."""

from __future__ import annotations

import os
import platform
import socket
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import celery
import psutil
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from jobs.executors import DOCKER_RUNTIME_LABELS
from jobs.executors.docker_engine import engine_version
from nodes.services import node_register, parse_labels

NODE_NAME_ENV = "SCHEDULER_NODE_NAME"
INCARNATION_ENV = "SCHEDULER_NODE_INCARNATION"
_state: dict[str, Any] = {"name": None, "incarnation": None}


def node_name_set(name: str) -> uuid.UUID:
    """Remember the node name and a new incarnation in this process and in the environment (pool children
    inherit both); returns the incarnation."""
    incarnation = uuid.uuid4()
    _state["name"], _state["incarnation"] = name, incarnation
    os.environ[NODE_NAME_ENV] = name
    os.environ[INCARNATION_ENV] = str(incarnation)
    return incarnation


def current_incarnation() -> uuid.UUID | None:
    """This worker start's incarnation; valid in pool children too."""
    if _state["incarnation"] is None and os.environ.get(INCARNATION_ENV):
        _state["incarnation"] = uuid.UUID(os.environ[INCARNATION_ENV])
    incarnation: uuid.UUID | None = _state["incarnation"]
    return incarnation


def current_node_name() -> str | None:
    """The Node.name this worker registered as; valid in pool children too."""
    # Pool children are forked after the bootstep set these; the variable also survives a spawn.
    return _state["name"] or os.environ.get(NODE_NAME_ENV) or None


def capacity() -> tuple[Decimal, int]:
    """CPU and memory this node offers: the settings, else what psutil sees on the host."""
    cpu = settings.SCHEDULER_NODE_CPU
    memory_mb = settings.SCHEDULER_NODE_MEMORY_MB
    if cpu is None:
        cpu = psutil.cpu_count() or 1
    if memory_mb is None:
        memory_mb = psutil.virtual_memory().total // (1024 * 1024)
    return Decimal(str(cpu)).quantize(Decimal("0.001")), int(memory_mb)


def _ip_address() -> str | None:
    """The local address this host uses to reach the broker (no packet is sent)."""
    target = urlsplit(settings.CELERY_BROKER_URL).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def node_runtime() -> tuple[dict[str, Any], str]:
    """The node's labels and version as this host offers them now: SCHEDULER_NODE_LABELS, plus
    runtime=docker (and the engine's version) while its Docker Engine answers."""
    try:
        labels = parse_labels(settings.SCHEDULER_NODE_LABELS)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    version = f"celery {celery.__version__}, python {platform.python_version()}"
    engine = engine_version() if settings.SCHEDULER_CONTAINER_RUNTIME == "auto" else None
    if engine is not None:
        # Container jobs (and sandboxed shell jobs) are placed on nodes with this label only.
        labels = {**DOCKER_RUNTIME_LABELS, **labels}
        version += f", docker {engine}"
    return labels, version


def node_register_self(name: str) -> None:
    """Register this worker's Node (its current incarnation) from the settings and the host it runs on;
    a node whose Docker Engine answers is labelled runtime=docker and reports the engine's version."""
    labels, version = node_runtime()
    cpu, memory_mb = capacity()
    node_register(
        name=name,
        hostname=name.partition("@")[2] or socket.gethostname(),
        ip_address=_ip_address(),
        cpu_capacity=cpu,
        memory_mb_capacity=memory_mb,
        labels=labels,
        version=version,
        incarnation=current_incarnation(),
    )
