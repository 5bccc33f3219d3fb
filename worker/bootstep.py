"""The worker bootstep: register at start, consume node.<name>, heartbeat, go offline on warm shutdown.

Wired by `scheduler_project.celery` (`NodeStep`, loaded by name once Django is set up). Life of a worker:

- bootstep init (before the consumer starts): remember the node name, add its queue node.<name> to the
  queues this worker consumes (besides "default" or whatever -Q says);
- bootstep start: register the Node with a new incarnation (capacity from psutil or SCHEDULER_NODE_CPU /
  SCHEDULER_NODE_MEMORY_MB, labels from SCHEDULER_NODE_LABELS, runtime=docker when its Docker Engine answers),
  take over what an earlier start of the same node left (worker.liveness) and remove containers of runs that
  are over (worker.containers), then a daemon thread in the main process heartbeats every
  SCHEDULER_HEARTBEAT_SECONDS with live usage and checks that every run on the node is a live task;
- SIGTERM (warm shutdown starts): the heartbeat thread marks the node draining at once, so nothing new is
  placed on it while its running tasks finish (the heartbeats go on, so the reaper leaves it alone);
- worker_shutdown (after the pool finished its tasks): stop heartbeating, mark the node offline and hand
  whatever is still queued on it to recovery, which places it on another node.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_shutdown,
    worker_shutting_down,
)
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections, transaction
from psycopg.pq import TransactionStatus

from jobs.services import executions_held, executions_recover_node
from nodes.models import Node
from nodes.placement import node_queue_name
from nodes.services import node_mark_offline

from .containers import containers_sweep
from .heartbeat import Heartbeat
from .identity import capacity, node_name_set, node_register_self
from .liveness import takeover_at_start
from .processes import leftovers_kill, subreaper_become

logger = logging.getLogger(__name__)
_state: dict[str, Any] = {"name": None, "incarnation": None, "heartbeat": None}


class NodeStep(bootsteps.StartStopStep):
    """Worker bootstep: node queue, registration, heartbeat thread (see the module docstring)."""

    label = "Node"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        name = parent.hostname
        _state["name"] = name
        _state["incarnation"] = node_name_set(name)  # before the pool forks: its processes inherit both
        # Runs after -Q was applied and before the consumer starts: add this node's own queue to them.
        parent.app.amqp.queues.select_add(
            node_queue_name(name), queue_arguments=dict(settings.SCHEDULER_QUEUE_ARGUMENTS)
        )

    def start(self, parent: Any) -> None:
        name = parent.hostname
        node_register_self(name)
        takeover_at_start(node_name=name, incarnation=_state["incarnation"])
        containers_sweep(node_name=name)  # what runs of earlier starts left behind
        cpu, _ = capacity()
        connection.close()  # not shared with the pool processes forked after this
        thread = Heartbeat(name, settings.SCHEDULER_HEARTBEAT_SECONDS, cpu, incarnation=_state["incarnation"])
        _state["heartbeat"] = thread
        thread.start()


@worker_process_init.connect
def _pool_process_init(**kwargs: Any) -> None:
    """A prefork pool process runs one job at a time: it reaps (and kills) what its jobs leave behind."""
    subreaper_become()


@task_postrun.connect
def _drop_stale_connections(**kwargs: Any) -> None:
    """After each task: drop a broken or CONN_MAX_AGE-old database connection, keep a healthy one."""
    # Celery's Django fixup would close every connection after every task; CELERY_DB_REUSE_MAX turns that
    # off (a reconnect cost more than a no-op job), so this does what Django does after each request.
    for conn in connections.all(initialized_only=True):
        raw = conn.connection
        if (
            raw is not None
            and not conn.in_atomic_block
            and raw.info.transaction_status != TransactionStatus.IDLE
        ):
            conn.close()  # left mid-query or mid-transaction (e.g. a handler interrupted): never reuse it
    close_old_connections()
    _used_at["at"] = time.monotonic()


# Django checks a connection (SELECT 1) before its first use after close_old_connections, i.e. before every
# task here. A connection a task used a moment ago is alive: check only one that sat idle for a while.
HEALTH_CHECK_IDLE_SECONDS = 1.0
_used_at = {"at": 0.0}


@task_prerun.connect
def _skip_health_check_of_a_fresh_connection(**kwargs: Any) -> None:
    if time.monotonic() - _used_at["at"] < HEALTH_CHECK_IDLE_SECONDS:
        for conn in connections.all(initialized_only=True):
            wrapper: Any = conn  # health_check_done (Django 4.1+) is not in the type stubs
            if wrapper.connection is not None and not wrapper.errors_occurred:
                wrapper.health_check_done = True


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
    close_old_connections()
    reason = f"node {name} shut down before starting it"
    try:
        for held in executions_held(node_name=name, statuses=["running"]):  # a cold shutdown
            leftovers_kill(held.claim_token)  # what still runs dies with the worker
        with transaction.atomic():
            if node_mark_offline(name=name, reason=reason):
                node_id = Node.objects.values_list("pk", flat=True).get(name=name)
                executions_recover_node(node_id=node_id, reason=reason)
    except DatabaseError:
        logger.exception("node %s: could not mark itself offline; the reaper will", name)
