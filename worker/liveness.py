"""A run recorded as `running` on this node is a live task of this worker start, or it is lost.

Two checks keep that true without waiting for a timeout or the reaper:

- at registration, a worker start (a new incarnation) takes over what an earlier start of the same node left:
  its queued executions are placed again (their messages may sit unacknowledged with the dead process
  until the broker's visibility timeout) and its running ones are lost, once what they left running on
  this host is killed;
- at every heartbeat, the worker's main process compares the executions running on its node with the tasks
  Celery holds (reserved or active, the main process's own bookkeeping): a run claimed by an earlier start,
  or whose task is over (its pool process died, it hit the hard time limit, or it gave up recording its
  outcome while the database was away), is lost once its processes are gone.

The database rows are read before Celery's bookkeeping: a task holds its request from before its claim
until after its finish, so a live run is never taken for a lost one; one that ends in between is no longer
`running` and the conditional update skips it.
"""

from __future__ import annotations

import logging
import uuid

from celery.worker import state as worker_state

from jobs.services import Held, executions_claims_lost, executions_held, executions_requeue

from .processes import leftovers_kill

logger = logging.getLogger(__name__)
EXECUTE_TASK = "jobs.execute"


def live_execution_ids() -> set[int]:
    """The executions of the jobs.execute tasks this worker process holds (reserved or active)."""
    for _ in range(5):
        try:
            requests = list(worker_state.requests.values())
            break
        except RuntimeError:  # the consumer changed the dict while it was copied: copy again
            continue
    else:
        requests = []
    ids = set()
    for request in requests:
        if request.name != EXECUTE_TASK:
            continue
        try:
            value = request.kwargs.get("execution_id") if request.kwargs else request.args[0]
            ids.add(int(value))
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
    return ids


def _lose(claims: list[Held], reason: str) -> int:
    """Kill what each claim left running here; mark lost those proven gone."""
    gone = [held for held in claims if leftovers_kill(held.claim_token)]
    for held in claims:
        if held not in gone:
            logger.error("execution %s: its processes survive; it stays running until they are gone", held.id)
    changed = executions_claims_lost(claims=gone, reason=reason)
    for row in changed:
        logger.warning("execution %s: %s; marked lost", row.id, reason)
    return len(changed)


def takeover_at_start(*, node_name: str, incarnation: uuid.UUID | None) -> int:
    """A new worker start of `node_name` recovers what its earlier starts held; returns the count."""
    held = executions_held(node_name=node_name)
    queued = [h.id for h in held if h.status == "queued"]
    earlier = [h for h in held if h.status == "running" and h.incarnation != incarnation]
    requeued = len(executions_requeue(ids=queued, reason=f"node {node_name} restarted")) if queued else 0
    lost = _lose(earlier, f"its worker ({node_name}) restarted while running it") if earlier else 0
    if requeued or lost:
        logger.warning(
            "node %s: %d queued execution(s) placed again, %d run(s) of an earlier start lost",
            node_name, requeued, lost,
        )  # fmt: skip
    return requeued + lost


def claims_check(*, node_name: str, incarnation: uuid.UUID | None, held: list[Held]) -> int:
    """Mark lost the runs on this node that no task of this worker start runs (`held` read just before)."""
    running = [h for h in held if h.status == "running"]
    if not running:
        return 0
    live = live_execution_ids()
    earlier = [h for h in running if h.incarnation != incarnation]
    over = [h for h in running if h.incarnation == incarnation and h.id not in live]
    lost = 0
    if earlier:
        lost += _lose(earlier, f"its worker ({node_name}) restarted while running it")
    if over:
        lost += _lose(
            over,
            "the worker process running it died (or gave up recording its outcome: the database was away)",
        )
    return lost
