"""The container janitor: no container outlives its run.

A container job's executor removes its container however the run ends. What it cannot remove (its pool
process was SIGKILLed, the whole worker was, the engine was away at the end) is found here by its labels:
at every worker start and every SCHEDULER_CONTAINER_JANITOR_SECONDS, each container of this node whose
execution is not running here under the same claim (finished, lost, retried elsewhere, or unknown to the
database) is killed and removed. A run marked lost by this worker has its containers removed before
(worker.processes.leftovers_kill).
"""

from __future__ import annotations

import contextlib
import logging

from django.conf import settings

from jobs.executors.docker_engine import (
    ENGINE_ERRORS,
    LABEL_EXECUTION,
    LABEL_RUN_KEY,
    container_remove,
    engine_client,
    run_containers,
)
from jobs.services import executions_held

from .processes import run_key

logger = logging.getLogger(__name__)


def containers_sweep(*, node_name: str) -> int:
    """Remove this node's containers whose run is over; returns how many were removed."""
    if settings.SCHEDULER_CONTAINER_RUNTIME == "off":
        return 0
    try:
        client = engine_client()
    except ENGINE_ERRORS:
        return 0  # no engine here
    try:
        found = run_containers(client, node=node_name)
        if not found:
            return 0
        # Read after the listing: a container created after its claim is running under that claim here.
        held = executions_held(node_name=node_name, statuses=["running"])
        running = {(h.id, run_key(h.claim_token)) for h in held if h.claim_token is not None}
        removed = 0
        for container in found:
            labels = container.labels or {}
            try:
                execution_id = int(labels.get(LABEL_EXECUTION, "0"))
            except ValueError:
                execution_id = 0
            if (execution_id, labels.get(LABEL_RUN_KEY, "")) in running:
                continue
            if container_remove(container):
                removed += 1
                logger.warning(
                    "removed container %s of execution %s: its run is over", container.short_id, execution_id
                )
        return removed
    except ENGINE_ERRORS as exc:
        logger.warning("container janitor: the engine does not answer (%s); trying again later", exc)
        return 0
    finally:
        with contextlib.suppress(Exception):
            client.close()
