"""The heartbeat thread of a worker's main process: live usage every SCHEDULER_HEARTBEAT_SECONDS, and the
node drained at once when a warm shutdown starts."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

import psutil
from django.db import DatabaseError, InterfaceError, close_old_connections

from jobs.models import Execution
from nodes.models import Node
from nodes.services import node_drain, node_heartbeat_record

from .identity import node_register_self

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

    def __init__(self, name: str, interval: float, cpu_capacity: Decimal) -> None:
        super().__init__(name="node-heartbeat", daemon=True)
        self.node_name = name
        self.interval = interval
        self.probe = UsageProbe(cpu_capacity)
        self.stopping = threading.Event()
        self.shutting_down = threading.Event()
        self.wake = threading.Event()

    def run(self) -> None:
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
        cpu_percent, memory_mb = self.probe.sample()
        running = Execution.objects.filter(node__name=self.node_name, status=Execution.Status.RUNNING).count()
        if not node_heartbeat_record(
            name=self.node_name, cpu_percent=cpu_percent, memory_used_mb=memory_mb, running_count=running
        ):
            logger.warning("node %s vanished from the database: registering again", self.node_name)
            node_register_self(self.node_name)

    def _drain_for_shutdown(self) -> bool:
        node_drain(name=self.node_name)
        logger.info("node %s: warm shutdown, draining until its tasks finish", self.node_name)
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.join(timeout=max(5.0, self.interval * 2))
