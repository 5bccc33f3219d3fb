"""The heartbeat thread of a worker's main process: live usage every SCHEDULER_HEARTBEAT_SECONDS, the
liveness check of the runs on its node (worker.liveness), and the node drained at once when a warm shutdown
starts; every SCHEDULER_CONTAINER_JANITOR_SECONDS, the container janitor (worker.containers) and the node's
runtime label (runtime=docker while its engine answers). A database that does not answer costs a tick,
never the thread."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from decimal import Decimal

import psutil
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections

from jobs.services import Held, executions_held
from nodes.models import Node
from nodes.services import node_drain, node_heartbeat_record, node_runtime_record

from .containers import containers_sweep
from .dbretry import connections_reset
from .identity import node_register_self, node_runtime
from .liveness import claims_check

logger = logging.getLogger(__name__)


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

    def __init__(
        self, name: str, interval: float, cpu_capacity: Decimal, incarnation: uuid.UUID | None = None
    ) -> None:
        super().__init__(name="node-heartbeat", daemon=True)
        self.node_name = name
        # The worker start this thread belongs to: its runs are checked against Celery's tasks (None: no
        # check, e.g. a heartbeat outside a worker).
        self.incarnation = incarnation
        self.interval = interval
        self.probe = UsageProbe(cpu_capacity)
        self.stopping = threading.Event()
        self.shutting_down = threading.Event()
        self.wake = threading.Event()
        self._next_sweep = time.monotonic() + settings.SCHEDULER_CONTAINER_JANITOR_SECONDS
        self._runtime: tuple[dict, str] | None = None  # the labels and version last stored

    def run(self) -> None:
        drained = False
        while not self.stopping.is_set():
            close_old_connections()
            try:
                if self.shutting_down.is_set() and not drained:
                    drained = self._drain_for_shutdown()
                held = self.beat()
                if self.incarnation is not None:
                    claims_check(node_name=self.node_name, incarnation=self.incarnation, held=held)
                    if time.monotonic() >= self._next_sweep:
                        self._next_sweep = time.monotonic() + settings.SCHEDULER_CONTAINER_JANITOR_SECONDS
                        self._runtime_check()
                        containers_sweep(node_name=self.node_name)
            except (DatabaseError, InterfaceError, Node.DoesNotExist) as exc:
                # The database is down or the row was deleted: try again next tick, never die.
                logger.warning("node %s: heartbeat failed, retrying next tick: %s", self.node_name, exc)
                connections_reset()
            self.wake.wait(self.interval)
            self.wake.clear()
        close_old_connections()

    def beat(self) -> list[Held]:
        """Record live usage; returns the runs on the node (read before the usage is recorded)."""
        cpu_percent, memory_mb = self.probe.sample()
        held = executions_held(node_name=self.node_name, statuses=["running"])
        running = len(held)
        if not node_heartbeat_record(
            name=self.node_name, cpu_percent=cpu_percent, memory_used_mb=memory_mb, running_count=running
        ):
            logger.warning("node %s vanished from the database: registering again", self.node_name)
            node_register_self(self.node_name)
        return held

    def _runtime_check(self) -> None:
        """Label the node runtime=docker while its engine answers, and only then (an engine started or
        stopped after the worker): container jobs are placed where they can run."""
        labels, version = node_runtime()
        if (labels, version) != self._runtime:
            node_runtime_record(name=self.node_name, labels=labels, version=version)
            self._runtime = (labels, version)

    def _drain_for_shutdown(self) -> bool:
        node_drain(name=self.node_name)
        logger.info("node %s: warm shutdown, draining until its tasks finish", self.node_name)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.join(timeout=max(5.0, self.interval * 2))
