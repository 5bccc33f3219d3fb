"""Worker side of a node: register at start, consume node.<name>, heartbeat, go offline on warm shutdown.

Wired by `scheduler_project.celery` as a worker bootstep (`NodeStep`). Life of a worker process:

- bootstep init (before the consumer starts): remember the node name, add its queue node.<name> to the
  queues this worker consumes (besides "default" or whatever -Q says);
- bootstep start: register the Node (capacity from psutil or SCHEDULER_NODE_CPU / SCHEDULER_NODE_MEMORY_MB,
  labels from SCHEDULER_NODE_LABELS), then a daemon thread in the main process heartbeats every
  SCHEDULER_HEARTBEAT_SECONDS with live usage;
- SIGTERM (warm shutdown starts): the heartbeat thread marks the node draining at once, so nothing new is
  placed on it while its running tasks finish (the heartbeats go on, so the reaper leaves it alone);
- worker_shutdown (after the pool finished its tasks): stop heartbeating, mark the node offline and hand
  whatever is still queued on it to recovery, which re-places it on another node.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import celery
import psutil
from celery import bootsteps
from celery.signals import task_postrun, worker_shutdown, worker_shutting_down

logger = logging.getLogger(__name__)

_NODE_NAME_ENV = "SCHEDULER_NODE_NAME"
_state: dict[str, Any] = {"name": None, "heartbeat": None}


def current_node_name() -> str | None:
    """The Node.name (celery hostname NAME@HOST) this worker registered as; valid in pool children too."""
    # Pool children are forked after the bootstep set these; the variable also survives a spawn.
    return _state["name"] or os.environ.get(_NODE_NAME_ENV) or None


def node_queue_name(name: str) -> str:
    """The broker queue only the node `name` consumes (Node.queue_name)."""
    return f"node.{name}"


def _capacity() -> tuple[Decimal, int]:
    from django.conf import settings

    cpu = settings.SCHEDULER_NODE_CPU
    memory_mb = settings.SCHEDULER_NODE_MEMORY_MB
    if cpu is None:
        cpu = psutil.cpu_count() or 1
    if memory_mb is None:
        memory_mb = psutil.virtual_memory().total // (1024 * 1024)
    return Decimal(str(cpu)).quantize(Decimal("0.001")), int(memory_mb)


def _ip_address() -> str | None:
    """The local address this host uses to reach the broker (no packet is sent)."""
    from django.conf import settings

    target = urlsplit(settings.CELERY_BROKER_URL).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def node_register_self(name: str) -> None:
    """Register this worker's Node from the settings and the host it runs on."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from nodes.services import node_register, parse_labels

    try:
        labels = parse_labels(settings.SCHEDULER_NODE_LABELS)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    cpu, memory_mb = _capacity()
    node_register(
        name=name,
        hostname=name.partition("@")[2] or socket.gethostname(),
        ip_address=_ip_address(),
        cpu_capacity=cpu,
        memory_mb_capacity=memory_mb,
        labels=labels,
        version=f"celery {celery.__version__}, python {platform.python_version()}",
    )


class UsageProbe:
    """CPU and memory of this worker's process tree (main process, pool children, the jobs they run)."""

    def __init__(self, cpu_capacity: Decimal) -> None:
        self.cpu_capacity = float(cpu_capacity) or 1.0
        self._procs: dict[int, psutil.Process] = {}

    def sample(self) -> tuple[float, int]:
        """(CPU in % of the node's cpu capacity since the last sample, resident memory in MB)."""
        root = psutil.Process()
        seen: dict[int, psutil.Process] = {}
        cpu = 0.0
        rss = 0
        for proc in [root, *root.children(recursive=True)]:
            proc = self._procs.get(proc.pid, proc)  # keep the object: cpu_percent() measures since last call
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen[proc.pid] = proc
        self._procs = seen
        return round(cpu / self.cpu_capacity, 1), rss // (1024 * 1024)


class Heartbeat(threading.Thread):
    """Daemon thread of the worker's main process: heartbeats, and drains the node when shutdown starts."""

    def __init__(self, name: str, interval: float, cpu_capacity: Decimal) -> None:
        super().__init__(name="node-heartbeat", daemon=True)
        self.node_name = name
        self.interval = interval
        self.probe = UsageProbe(cpu_capacity)
        self.stopping = threading.Event()
        self.shutting_down = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
        from django.db import DatabaseError, InterfaceError, close_old_connections

        from nodes.models import Node

        drained = False
        while not self.stopping.is_set():
            close_old_connections()
            try:
                if self.shutting_down.is_set() and not drained:
                    drained = self._drain_for_shutdown()
                self.beat()
            except (DatabaseError, InterfaceError, Node.DoesNotExist):
                # The database is down or the row was deleted: try again next tick, never die.
                logger.exception("node %s: heartbeat failed; retrying next tick", self.node_name)
            self.wake.wait(self.interval)
            self.wake.clear()
        close_old_connections()

    def beat(self) -> None:
        from jobs.models import Execution
        from nodes.services import node_heartbeat_record

        cpu_percent, memory_mb = self.probe.sample()
        running = Execution.objects.filter(node__name=self.node_name, status="running").count()
        if not node_heartbeat_record(
            name=self.node_name, cpu_percent=cpu_percent, memory_used_mb=memory_mb, running_count=running
        ):
            logger.warning("node %s vanished from the database: registering again", self.node_name)
            node_register_self(self.node_name)

    def _drain_for_shutdown(self) -> bool:
        from nodes.services import node_drain

        node_drain(name=self.node_name)
        logger.info("node %s: warm shutdown, draining until its tasks finish", self.node_name)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.join(timeout=max(5.0, self.interval * 2))


class NodeStep(bootsteps.StartStopStep):
    """Worker bootstep: node queue, registration, heartbeat thread (see the module docstring)."""

    label = "Node"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        name = parent.hostname
        _state["name"] = name
        os.environ[_NODE_NAME_ENV] = name
        # Runs after -Q was applied and before the consumer starts: add this node's own queue to them.
        parent.app.amqp.queues.select_add(node_queue_name(name), queue_arguments={"x-max-priority": 10})

    def start(self, parent: Any) -> None:
        from django.conf import settings
        from django.db import connection

        name = parent.hostname
        node_register_self(name)
        cpu, _ = _capacity()
        connection.close()  # not shared with the pool processes forked after this
        thread = Heartbeat(name, settings.SCHEDULER_HEARTBEAT_SECONDS, cpu)
        _state["heartbeat"] = thread
        thread.start()


@task_postrun.connect
def _drop_stale_connections(**kwargs: Any) -> None:
    """After each task: drop a broken or CONN_MAX_AGE-old database connection, keep a healthy one."""
    # Celery's Django fixup would close every connection after every task; CELERY_DB_REUSE_MAX turns that
    # off (a reconnect cost more than a no-op job), so this does what Django does after each request.
    from django.db import close_old_connections, connections
    from psycopg.pq import TransactionStatus

    for conn in connections.all(initialized_only=True):
        raw = conn.connection
        if (
            raw is not None
            and not conn.in_atomic_block
            and raw.info.transaction_status != TransactionStatus.IDLE
        ):
            conn.close()  # left mid-query or mid-transaction (e.g. a handler interrupted): never reuse it
    close_old_connections()


@worker_shutting_down.connect
def _on_shutting_down(sender: Any = None, how: str = "", **kwargs: Any) -> None:
    # Runs inside the signal handler: only flag it; the heartbeat thread does the database work.
    thread = _state.get("heartbeat")
    if thread is not None and how == "Warm":
        thread.shutting_down.set()
        thread.wake.set()


@worker_shutdown.connect
def _on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    """After the pool finished its tasks: stop heartbeating, go offline, re-place what is still queued."""
    thread = _state.get("heartbeat")
    name = _state.get("name")
    if thread is None or name is None:
        return
    _state["heartbeat"] = None
    thread.stop()
    from django.db import DatabaseError, close_old_connections

    from nodes.services import node_mark_offline

    close_old_connections()
    try:
        node_mark_offline(name=name, reason=f"node {name} shut down before starting it")
    except DatabaseError:
        logger.exception("node %s: could not mark itself offline; the reaper will", name)
