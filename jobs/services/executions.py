"""Execution state: the only module that writes `Execution.status`.

`TRANSITIONS` says which status may become which, and what the change does besides (its effects: free the
reserved capacity, decide a retry or a dead letter, publish to the node's queue, nudge a placement pass).
`transition()` is the one conditional update every change goes through: it locks the rows that are still in
an allowed source status, moves them in one statement and returns what the effects need, so the number of
rows returned tells a caller whether it won. Firing, placement, the worker (claim, finish), cancel, node
recovery, the reconciler's sweeps and the retry sweep all call the functions below; nothing else writes
the column (tests/jobs/test_state.py checks both the table and that rule).

Statuses: pending -> queued -> running -> succeeded | retrying | dead | timed_out | lost | cancelled;
pending/queued/running -> cancelled; pending -> skipped (a policy declined the slot); queued -> pending
(its node left before it started: placed again without using an attempt); queued/running -> lost.
A plain failure ends `retrying` (attempts left) or `dead`; `timed_out` and `lost` keep saying what happened
and their JobRetry / DeadLetter row carries the decision. `failed` is kept for old rows and is not written.

Durability: every transition commits synchronously but the claim, whose commit does not wait for the WAL
flush (any later synchronous commit on the server flushes it; PostgreSQL's WAL writer within a fraction of
a second). A claim lost in a database crash leaves its execution `queued`: the run that started is stopped at
its next check ("queued"), its finish is fenced off and frees nothing, and the reconciler publishes the
execution again: the job runs again, at least once, never lost and never counted twice.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psutil
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.utils import timezone
from psycopg.types.json import Jsonb

from nodes.models import Node, ResourceAllocation
from nodes.placement import capacity_release, capacity_release_sql, node_queue_name
from scheduler_project.db import sql_execute

from .. import messages
from ..executors import DOCKER_RUNTIME_LABELS, container_kinds
from ..executors.base import Outcome
from ..models import Execution
from .retries import FailedAttempt, failure_records_create

logger = logging.getLogger(__name__)
S = Execution.Status
OVERDUE_GRACE = timedelta(seconds=300)
ERROR_MAX = 10000


class Effect(enum.Flag):
    """What a transition does besides changing the status, in the same transaction (or after commit)."""

    NONE = 0
    RELEASE = enum.auto()  # free the capacity reserved for it on its node
    DECIDE = enum.auto()  # a failed attempt: a JobRetry if attempts remain, else a DeadLetter (+ notice)
    PUBLISH = enum.auto()  # `jobs.execute` to its node's queue, after commit
    PLACE = enum.auto()  # capacity freed: nudge a placement pass after commit if work is waiting


_ENDED = Effect.RELEASE | Effect.PLACE
_FAILED = Effect.RELEASE | Effect.DECIDE | Effect.PLACE

TRANSITIONS: Mapping[tuple[str, str], Effect] = {
    (S.PENDING, S.QUEUED): Effect.PUBLISH,  # placed: capacity reserved by the caller in this transaction
    (S.PENDING, S.SKIPPED): Effect.NONE,  # the misfire or concurrency policy declined the slot
    (S.PENDING, S.CANCELLED): Effect.NONE,  # nothing reserved yet
    (S.QUEUED, S.RUNNING): Effect.NONE,  # claimed by its node's worker
    (S.QUEUED, S.PENDING): _ENDED,  # its node left before it started: placed again, no attempt used
    (S.QUEUED, S.CANCELLED): _ENDED,
    (S.QUEUED, S.LOST): _FAILED,
    (S.RUNNING, S.SUCCEEDED): _ENDED,
    (S.RUNNING, S.RETRYING): _FAILED,  # failed, attempts left
    (S.RUNNING, S.DEAD): _FAILED,  # failed, none left
    (S.RUNNING, S.TIMED_OUT): _FAILED,
    (S.RUNNING, S.LOST): _FAILED,
    # By a person or the replace policy: the worker stops the run and frees the capacity when it exits.
    (S.RUNNING, S.CANCELLED): Effect.NONE,
}


class IllegalTransition(ValueError):
    """A status change the transition table does not allow."""


@dataclass(frozen=True)
class Changed:
    """One execution a transition moved; the other fields are read only when its effects need them (a
    failure's retry decision, a publish, a claim)."""

    id: int
    source: str
    target: str
    job_id: Any = None
    attempt: Any = None
    error: str = ""
    node_name: str | None = None
    max_retries: Any = None
    retry_backoff_seconds: Any = None
    retry_backoff_max_seconds: Any = None
    retry_jitter: Any = None
    priority: Any = None
    timeout_seconds: Any = None
    kind: str = ""
    payload: Any = None
    cpu: Any = None
    memory_mb: Any = None


_RETRY_COLUMNS = ("max_retries", "retry_backoff_seconds", "retry_backoff_max_seconds", "retry_jitter")
_CHANGED_FIELDS = (
    "id", "job_id", "attempt", "error", "node_name", *_RETRY_COLUMNS, "priority", "timeout_seconds", "kind",
    "payload", "cpu", "memory_mb",
)  # fmt: skip


def _sql_value(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict | list) else value


@functools.cache
def _transition_sql(
    *,
    source: tuple[str, ...],
    target: str,
    columns: tuple[str, ...],
    where: str,
    with_payload: bool,
    one_row: bool,
    per_row: tuple[tuple[str, str], ...] = (),
) -> tuple[str, tuple[str, ...]]:
    """The one statement of a transition, as lean as its effects allow: (sql, names of what it returns).

    `per_row`: (column, SQL type) set to a value of its own on each row, from arrays bound beside the ids
    (`unnest`), so that rows given different values still move in one statement."""
    effects = Effect.NONE
    for status in source:
        effects |= TRANSITIONS[(status, target)]
    returned: dict[str, str] = {"id": "e.id"}
    if effects & Effect.DECIDE or with_payload:
        returned.update({c: f"e.{c}" for c in ("job_id", "attempt", "error")})
    if effects & Effect.DECIDE:
        returned.update({c: f"j.{c}" for c in _RETRY_COLUMNS})
    if effects & Effect.PUBLISH:
        returned["node_name"] = "(SELECT name FROM nodes_node WHERE id = e.node_id)"
        returned.update({c: f"j.{c}" for c in ("priority", "timeout_seconds")})
    if with_payload:
        returned.update(
            {c: f"j.{c}" for c in ("kind", "payload", "timeout_seconds", "max_retries", "cpu", "memory_mb")}
        )
    join_job = any(expr.startswith("j.") for expr in returned.values())
    tables = ["jobs_job AS j"] if join_job else []
    if per_row:
        arrays = ", ".join(["%s::bigint[]", *(f"%s::{sql_type}[]" for _, sql_type in per_row)])
        tables.insert(0, f"unnest({arrays}) AS v(id, {', '.join(column for column, _ in per_row)})")
    if len(source) == 1:
        # One source status: the conditional UPDATE alone decides who wins (the old status is known).
        # One row (a claim, a finish) binds scalars: with an array parameter PostgreSQL plans the prepared
        # statement again on every execution (a custom plan), with scalars it keeps one generic plan.
        ids = "e.id = v.id" if per_row else ("e.id = %s" if one_row else "e.id = ANY(%s::bigint[])")
        condition = f"{ids} AND e.status = %s"
        returned["source"] = "%s::text"
    else:
        # Several: lock them (id order) to learn each one's old status, which decides its effects.
        tables.insert(
            0,
            "(SELECT x.id, x.status FROM jobs_execution AS x WHERE x.id = ANY(%s::bigint[]) "
            "AND x.status = ANY(%s::text[]) ORDER BY x.id FOR UPDATE) AS o",
        )
        condition = "e.id = o.id AND v.id = o.id" if per_row else "e.id = o.id"
        returned["source"] = "o.status"
    if join_job:
        condition += " AND j.id = e.job_id"
    assignments = ", ".join(
        ["status = %s", *(f"{column} = %s" for column in columns), *(f"{c} = v.{c}" for c, _ in per_row)]
    )
    returning = ", ".join(f"{expr} AS {name}" for name, expr in returned.items())
    from_clause = f" FROM {', '.join(tables)}" if tables else ""
    # Only this module's column names and SQL are formatted in; every value is a bound parameter.
    update = (
        f"UPDATE jobs_execution AS e SET {assignments}{from_clause} "  # noqa: S608
        f"WHERE {condition} {where} RETURNING {returning}"
    )
    names = (*returned, "released")
    if Effect.RELEASE not in effects:
        return f"{update}, 0 AS released", names
    holders = (
        "SELECT id FROM moved WHERE source = ANY(%s::text[])" if len(source) > 1 else "SELECT id FROM moved"
    )
    sql = (
        f"WITH moved AS ({update}), {capacity_release_sql(holders)} "  # noqa: S608
        "SELECT moved.*, (SELECT n FROM released_count) AS released FROM moved"
    )
    return sql, names


def transition(
    *,
    ids: Sequence[int],
    source: Collection[str],
    target: str,
    values: Mapping[str, Any] | None = None,
    where: str = "",
    where_params: Sequence[Any] = (),
    with_payload: bool = False,
    flush_wal: bool = True,
    per_row: Mapping[str, tuple[str, Sequence[Any]]] | None = None,
) -> list[Changed]:
    """Move the executions among `ids` whose status is in `source` to `target` (one conditional UPDATE),
    set `values` on them, apply the transitions' effects; returns the rows moved (in id order).

    `per_row` maps a column to (its SQL type, one value per id in `ids` order): a value of each row's own,
    still in the one statement.

    One statement: the capacity a transition frees is released in it (nodes.placement's release CTEs), so
    the common case (a run that succeeded) needs no transaction of its own. `where` adds conditions on the
    row (alias e), e.g. "AND e.claim_token = %s". Raises IllegalTransition for a pair the table does not
    allow, before touching the database.
    """
    for status in source:
        if (status, target) not in TRANSITIONS:
            raise IllegalTransition(f"execution status {status!r} cannot become {target!r}")
    if not ids:
        return []
    source = tuple(dict.fromkeys(source))
    values = dict(values or {})
    per_row = dict(per_row or {})
    if len(ids) == 1:  # one row binds scalars (the generic plan, below)
        values.update({column: row_values[0] for column, (_, row_values) in per_row.items()})
        per_row = {}
    one_row = len(ids) == 1 and len(source) == 1
    sql, names = _transition_sql(
        source=source,
        target=target,
        columns=tuple(values),
        where=where,
        with_payload=with_payload,
        one_row=one_row,
        per_row=tuple((column, sql_type) for column, (sql_type, _) in per_row.items()),
    )
    params = [target, *(_sql_value(v) for v in values.values())]
    rows_params: list[Any] = [list(ids), *(list(v) for _, v in per_row.values())] if per_row else []
    if len(source) == 1:
        ids_params = rows_params or [ids[0] if one_row else list(ids)]
        params += [*ids_params, source[0], *where_params, source[0]]
    else:
        params += [list(ids), list(source), *rows_params, *where_params]
        if "released_count" in sql:  # the release CTE's holders: the sources whose transition releases
            params.append([s for s in source if Effect.RELEASE in TRANSITIONS[(s, target)]])
    rows = [dict(zip(names, row, strict=True)) for row in sql_execute(sql, params, flush_wal=flush_wal)]
    if any(row.get("released") for row in rows):
        messages.place_soon()  # capacity freed: placed work may fit now
    changed = sorted((_changed(row, target) for row in rows), key=lambda c: c.id)
    _effects(changed)
    return changed


def _changed(row: Mapping[str, Any], target: str) -> Changed:
    fields = {name: row[name] for name in _CHANGED_FIELDS if name in row}
    if "payload" in fields:
        fields["payload"] = _json(fields["payload"])
    return Changed(source=row["source"], target=target, **fields)


def _json(value: Any) -> Any:
    # Django loads jsonb as text (JSONField decodes it); a raw cursor gets that text.
    return json.loads(value) if isinstance(value, str) else value


def _effects(changed: Sequence[Changed]) -> None:
    """The effects a transition has besides its statement (RELEASE and PLACE are done in it)."""
    effects = {row.id: TRANSITIONS[(row.source, row.target)] for row in changed}
    decide = [row for row in changed if Effect.DECIDE in effects[row.id]]
    if decide:
        failure_records_create(attempts=[_failed_attempt(row) for row in decide])
    publish = [row for row in changed if Effect.PUBLISH in effects[row.id]]
    messages.execute_publish_on_commit(
        [
            messages.ExecuteMessage(
                execution_id=row.id,
                queue=node_queue_name(row.node_name),
                priority=row.priority,
                timeout_seconds=row.timeout_seconds,
            )
            for row in publish
            if row.node_name
        ]
    )


def _failed_attempt(row: Changed) -> FailedAttempt:
    return FailedAttempt(
        execution_id=row.id,
        job_id=row.job_id,
        attempt=row.attempt,
        status=row.target,
        error=row.error,
        max_retries=row.max_retries,
        retry_backoff_seconds=row.retry_backoff_seconds,
        retry_backoff_max_seconds=row.retry_backoff_max_seconds,
        retry_jitter=row.retry_jitter,
    )


# --- creation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewExecution:
    """An execution to create (always `pending`): one attempt of one slot of a job."""

    job_id: int
    scheduled_for: datetime
    trigger: str
    attempt: int = 1
    retry_of_id: int | None = None
    replay_of_id: int | None = None


@dataclass(frozen=True)
class Created:
    """A created execution with the job fields that its policies and its placement need."""

    id: int
    job_id: int
    scheduled_for: datetime
    attempt: int
    trigger: str
    cpu: Any
    memory_mb: int
    node_selector: dict[str, Any]
    priority: int
    concurrency_policy: str
    misfire_policy: str
    schedule_type: str | None
    every_seconds: int | None


_CREATE = """
WITH ins AS (
    INSERT INTO jobs_execution (job_id, scheduled_for, attempt, trigger, status, created_at, pending_reason,
        output, output_truncated, error, retry_of_id, replay_of_id)
    SELECT v.job_id, v.slot, v.attempt, v.trigger, 'pending', %s, '', '', false, '', v.retry_of, v.replay_of
    FROM unnest(%s::bigint[], %s::timestamptz[], %s::int[], %s::text[], %s::bigint[], %s::bigint[])
        WITH ORDINALITY AS v(job_id, slot, attempt, trigger, retry_of, replay_of, n)
    JOIN jobs_job AS jj ON jj.id = v.job_id {only_active}
    ORDER BY v.n
    ON CONFLICT (job_id, scheduled_for, attempt) DO NOTHING
    RETURNING id, job_id, scheduled_for, attempt, trigger
)
SELECT ins.id, ins.job_id, ins.scheduled_for, ins.attempt, ins.trigger, j.cpu, j.memory_mb, {selector},
    j.priority, j.concurrency_policy, j.misfire_policy, s.type, s.every_seconds
FROM ins JOIN jobs_job AS j ON j.id = ins.job_id LEFT JOIN jobs_jobschedule AS s ON s.job_id = ins.job_id
ORDER BY ins.id
"""


def _selector_sql() -> str:
    """The job's node_selector plus the labels its kind needs (a container engine for container jobs), as
    SQL over jobs_job AS j; formatted from this product's constants only."""
    kinds = ", ".join(f"'{kind}'" for kind in container_kinds())
    labels = json.dumps(DOCKER_RUNTIME_LABELS)
    own = "CASE WHEN jsonb_typeof(j.node_selector) = 'object' THEN j.node_selector ELSE '{}'::jsonb END"
    return f"CASE WHEN j.kind IN ({kinds}) THEN {own} || '{labels}'::jsonb ELSE j.node_selector END"


def executions_create(
    *, items: Sequence[NewExecution], now: datetime | None = None, only_active: bool = False
) -> list[Created]:
    """Insert pending executions in one statement; a (job, slot, attempt) that exists already is skipped
    (the unique constraint makes a second firing of a slot a no-op). With `only_active`, only for jobs
    whose status is active (beat's firings)."""
    if not items:
        return []
    sql = _CREATE.format(
        only_active="AND jj.status = 'active'" if only_active else "", selector=_selector_sql()
    )
    params: list[Any] = [
        now or timezone.now(),
        [i.job_id for i in items],
        [i.scheduled_for for i in items],
        [i.attempt for i in items],
        [i.trigger for i in items],
        [i.retry_of_id for i in items],
        [i.replay_of_id for i in items],
    ]
    return [_created(row) for row in sql_execute(sql, params)]


def _created(row: Sequence[Any]) -> Created:
    """A Created from columns id, job_id, slot, attempt, trigger, the job's fields[, the schedule's]."""
    schedule = (row[11], row[12]) if len(row) > 11 else (None, None)
    return Created(
        id=row[0],
        job_id=row[1],
        scheduled_for=row[2],
        attempt=row[3],
        trigger=row[4],
        cpu=row[5],
        memory_mb=row[6],
        node_selector=_json(row[7]) or {},
        priority=row[8],
        concurrency_policy=row[9],
        misfire_policy=row[10],
        schedule_type=schedule[0],
        every_seconds=schedule[1],
    )


# --- placement outcomes -----------------------------------------------------------------------


def executions_queue(*, placements: Sequence[tuple[int, int]]) -> list[Changed]:
    """pending -> queued, each (execution id, node id) on the node the caller reserved its capacity on,
    in one statement whatever the number of nodes; `jobs.execute` follows the commit."""
    return transition(
        ids=[pk for pk, _ in placements],
        source=[S.PENDING],
        target=S.QUEUED,
        values={"queued_at": timezone.now(), "pending_reason": ""},
        per_row={"node_id": ("bigint", [node_id for _, node_id in placements])},
    )


def executions_wait(*, ids: Sequence[int], reason: str) -> int:
    """Pending executions nothing fits for stay pending with the reason (not a status change)."""
    if not ids:
        return 0
    return Execution.objects.filter(pk__in=ids, status=S.PENDING).update(pending_reason=reason[:255])


def executions_skip(*, ids: Sequence[int], reason: str) -> list[Changed]:
    """pending -> skipped: a policy declined the slot (why, in `error`)."""
    return transition(
        ids=ids,
        source=[S.PENDING],
        target=S.SKIPPED,
        values={"finished_at": timezone.now(), "pending_reason": "", "error": reason[:2000]},
    )


def executions_pending_lock(*, limit: int) -> list[Created]:
    """Pending executions to place, highest priority first, then oldest; locked (others skip them)."""
    rows = sql_execute(
        "SELECT e.id, e.job_id, e.scheduled_for, e.attempt, e.trigger, j.cpu, j.memory_mb, "  # noqa: S608
        f"{_selector_sql()}, j.priority, j.concurrency_policy, j.misfire_policy "
        "FROM jobs_execution AS e JOIN jobs_job AS j ON j.id = e.job_id WHERE e.status = 'pending' "
        "ORDER BY j.priority DESC, e.created_at, e.id LIMIT %s FOR UPDATE OF e SKIP LOCKED",
        [limit],
    )
    return [_created(row) for row in rows]


# --- the worker's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A won claim: the fencing token and what the executor needs (read in the claiming statement)."""

    execution_id: int
    claim_token: uuid.UUID
    job_id: int
    kind: str
    payload: Any
    timeout_seconds: int
    attempt: int
    max_retries: int
    cpu: Any = 0
    memory_mb: int = 0

    @property
    def retries_left(self) -> bool:
        return self.attempt <= self.max_retries


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


StaleCheck = Callable[[uuid.UUID | None], bool]


def execution_claim(
    *,
    execution_id: int,
    node_name: str,
    pid: int,
    incarnation: uuid.UUID | None = None,
    token: uuid.UUID | None = None,
    leftovers_gone: StaleCheck | None = None,
) -> Claim | None:
    """queued -> running for the worker of `node_name` only, with a fresh claim token; None: nothing to run.

    One round trip: the conditional update returns what the run needs. A redelivered or stale message
    finds nothing to claim; one for a run this node already runs in a dead process marks that attempt lost
    once `leftovers_gone(its claim token)` says nothing of it runs any more. A caller retrying a claim cut
    off by a database error passes the same `token`: a claim that did commit is recognised as its own.
    """
    token = token or uuid.uuid4()
    rows = transition(
        ids=[execution_id],
        source=[S.QUEUED],
        target=S.RUNNING,
        values={
            "claim_token": token,
            "started_at": timezone.now(),
            "worker_pid": pid,
            "worker_incarnation": incarnation,
        },
        where="AND e.node_id = (SELECT id FROM nodes_node WHERE name = %s)",
        where_params=[node_name],
        with_payload=True,
        # A claim lost in a database crash costs a repeated run, never a lost one (see the module's
        # docstring): it does not wait for the WAL flush. The finish does.
        flush_wal=False,
    )
    if rows:
        row = rows[0]
        return Claim(row.id, token, row.job_id, row.kind, row.payload, row.timeout_seconds, row.attempt,
                     row.max_retries, row.cpu or 0, row.memory_mb or 0)  # fmt: skip
    return _stale_claim_resolve(
        execution_id=execution_id, node_name=node_name, pid=pid, token=token, leftovers_gone=leftovers_gone
    )


@transaction.atomic
def _stale_claim_resolve(
    *, execution_id: int, node_name: str, pid: int, token: uuid.UUID, leftovers_gone: StaleCheck | None
) -> Claim | None:
    # The message came back for an execution this node already runs: with acks_late and
    # reject_on_worker_lost that means the process running it died (a poison job killing its worker).
    # That attempt failed, counted in the database, so a job that kills its worker cannot loop.
    row = (
        Execution.objects.select_for_update()
        .filter(pk=execution_id, status=S.RUNNING, node__name=node_name)
        .values_list(
            "worker_pid",
            "claim_token",
            "job_id",
            "job__kind",
            "job__payload",
            "job__timeout_seconds",
            "attempt",
            "job__max_retries",
            "job__cpu",
            "job__memory_mb",
        )  # fmt: skip
        .first()
    )
    if row is None:
        logger.info("execution %s is not queued here any more: stale message dropped", execution_id)
        return None
    owner, claim_token, *claimed = row
    if claim_token == token:  # our own claim, whose answer a database error cut off
        return Claim(execution_id, token, *claimed)
    if owner and owner != pid and _pid_alive(owner):
        logger.info("execution %s still runs in pid %s: duplicate message dropped", execution_id, owner)
        return None
    if leftovers_gone is not None and not leftovers_gone(claim_token):
        logger.error("execution %s: its dead attempt's processes survive; not retried yet", execution_id)
        return None
    execution_mark_lost(
        execution_id=execution_id,
        reason=f"the worker process (pid {owner}) died while running it; its message was redelivered",
    )
    return None


@dataclass(frozen=True)
class Held:
    """An execution a node holds (queued or running there), as its worker's liveness check sees it."""

    id: int
    status: str
    claim_token: uuid.UUID | None
    incarnation: uuid.UUID | None
    worker_pid: int | None


def executions_held(*, node_name: str, statuses: Collection[str] = (S.QUEUED, S.RUNNING)) -> list[Held]:
    """What the node `node_name` holds in `statuses` (queued and running by default; one indexed query)."""
    rows = (
        Execution.objects.filter(node__name=node_name, status__in=list(statuses))
        .order_by("pk")
        .values_list("pk", "status", "claim_token", "worker_incarnation", "worker_pid")
    )
    return [Held(*row) for row in rows]


def executions_claims_lost(*, claims: Sequence[Held], reason: str) -> list[Changed]:
    """Running -> lost for these claims, each only while it is still running under the same claim token
    (its node's worker found nothing of it running any more); the retry policy decides what follows."""
    running = [c for c in claims if c.claim_token is not None]
    if not running:
        return []
    with transaction.atomic():
        return transition(
            ids=[c.id for c in running],
            source=[S.RUNNING],
            target=S.LOST,
            values={"claim_token": None, "finished_at": timezone.now(), "error": reason[:2000]},
            where="AND e.claim_token = ANY(%s::uuid[])",
            where_params=[[c.claim_token for c in running]],
        )


def execution_stop_reason(*, execution_id: int, claim_token: uuid.UUID) -> str | None:
    """Why a running execution must stop (cancelled, lost, claim taken over), or None to go on."""
    row = Execution.objects.filter(pk=execution_id).values("status", "claim_token").first()
    if row is None:
        return "deleted"
    if row["status"] != S.RUNNING:
        return str(row["status"])
    if row["claim_token"] != claim_token:
        return "claim taken over"
    return None


def execution_output_store(
    *, execution_id: int, claim_token: uuid.UUID, output: str, truncated: bool
) -> bool:
    """Store the live output tail of a running execution (only by the holder of the claim)."""
    return bool(
        Execution.objects.filter(pk=execution_id, claim_token=claim_token).update(
            output=output, output_truncated=truncated
        )
    )


def execution_progress_store(*, execution_id: int, claim_token: uuid.UUID, progress: float) -> bool:
    """Store a progress report (0..100) of a running execution."""
    return bool(
        Execution.objects.filter(pk=execution_id, claim_token=claim_token, status=S.RUNNING).update(
            progress=progress
        )
    )


_OUTCOMES = frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED})


def _outcome_target(status: str, retries_left: bool) -> str:
    if status == S.FAILED:
        return S.RETRYING if retries_left else S.DEAD
    return status


def _retries_left(execution_id: int) -> bool:
    row = Execution.objects.filter(pk=execution_id).values("attempt", "job__max_retries").first()
    return bool(row and row["attempt"] <= row["job__max_retries"])


def execution_finish(
    *, execution_id: int, claim_token: uuid.UUID, outcome: Outcome, retries_left: bool | None = None
) -> bool:
    """running -> the outcome, only while the claim is ours (fencing); the capacity is freed either way.

    A success is one statement (status, output, capacity released). A failure becomes `retrying` (a
    JobRetry) or `dead` (a DeadLetter) in one transaction; `retries_left` comes from the claim (None: read).
    """
    if outcome.status not in _OUTCOMES:
        raise ValueError(f"not an outcome status: {outcome.status!r}")
    if outcome.status == S.FAILED and retries_left is None:
        retries_left = _retries_left(execution_id)
    if outcome.status == S.SUCCEEDED:
        return _finish(execution_id, claim_token, outcome, retries_left=False)
    with transaction.atomic(savepoint=False):
        return _finish(execution_id, claim_token, outcome, retries_left=bool(retries_left))


def _finish(execution_id: int, claim_token: uuid.UUID, outcome: Outcome, *, retries_left: bool) -> bool:
    kept = {
        "exit_code": outcome.exit_code,
        "output": outcome.output,
        "output_truncated": outcome.output_truncated,
        "result": outcome.result,
        "end_cause": outcome.cause,
        "memory_peak_bytes": outcome.memory_peak_bytes,
        "cpu_seconds": outcome.cpu_seconds,
    }
    done = {"progress": 100.0} if outcome.status == S.SUCCEEDED else {}
    won = transition(
        ids=[execution_id],
        source=[S.RUNNING],
        target=_outcome_target(outcome.status, retries_left),
        values={"finished_at": timezone.now(), "error": outcome.error[:ERROR_MAX], **kept, **done},
        where="AND e.claim_token = %s",
        where_params=[claim_token],
    )
    if won:
        if outcome.status == S.CANCELLED:
            execution_capacity_release(execution_id=execution_id)
        return True
    # Cancelled or lost meanwhile: keep what the run printed, never overwrite the newer status.
    Execution.objects.filter(pk=execution_id, claim_token=claim_token).update(**kept)
    logger.info("execution %s: claim no longer ours; result kept as output only", execution_id)
    # The run's processes are gone: whatever it held is free now (a cancel left it to us).
    execution_capacity_release(execution_id=execution_id)
    return False


def execution_capacity_release(*, execution_id: int) -> bool:
    """Free what an execution that ended still holds (a run cancelled while it ran, once its worker let
    go); idempotent; True if something was freed. An execution that is queued or running again (its claim
    was lost, or another worker holds it now) keeps its reservation."""
    ended = list(
        Execution.objects.filter(pk=execution_id)
        .exclude(status__in=[S.PENDING, S.QUEUED, S.RUNNING])
        .values_list("pk", flat=True)
    )
    if capacity_release(holder_ids=ended):
        messages.place_soon()
        return True
    return False


# --- cancel, lost, requeue, recovery ----------------------------------------------------------


@transaction.atomic
def execution_cancel(*, execution_id: int, reason: str = "cancelled") -> bool:
    """Pending/queued/running -> cancelled; a running one is killed by its worker within about a second."""
    return bool(
        transition(
            ids=[execution_id],
            source=[S.PENDING, S.QUEUED, S.RUNNING],
            target=S.CANCELLED,
            values={"finished_at": timezone.now(), "error": reason[:2000], "pending_reason": ""},
        )
    )


def executions_mark_lost(*, ids: Sequence[int], reason: str) -> list[Changed]:
    """Queued/running on a dead node or process -> lost; released; retried or dead-lettered."""
    return transition(
        ids=ids,
        source=[S.QUEUED, S.RUNNING],
        target=S.LOST,
        values={"claim_token": None, "finished_at": timezone.now(), "error": reason[:2000]},
    )


@transaction.atomic
def execution_mark_lost(*, execution_id: int, reason: str) -> bool:
    """One execution -> lost (see executions_mark_lost)."""
    return bool(executions_mark_lost(ids=[execution_id], reason=reason))


def executions_requeue(*, ids: Sequence[int], reason: str) -> list[Changed]:
    """Queued on a node that left -> pending again, placed elsewhere without using up an attempt."""
    changed = transition(
        ids=ids,
        source=[S.QUEUED],
        target=S.PENDING,
        values={"node_id": None, "queued_at": None, "pending_reason": reason[:255]},
    )
    if changed:
        messages.place_soon(force=True)
    return changed


@transaction.atomic
def executions_recover_node(*, node_id: int, reason: str) -> int:
    """What an offline node held goes back to work: queued -> pending (placed elsewhere, no attempt used),
    running -> lost (the retry policy decides); any allocation left on it is released. Returns the count."""
    held = list(
        Execution.objects.filter(node_id=node_id, status__in=[S.QUEUED, S.RUNNING])
        .order_by("pk")
        .values_list("pk", "status")
    )
    queued = [pk for pk, status in held if status == S.QUEUED]
    running = [pk for pk, status in held if status == S.RUNNING]
    recovered = len(executions_requeue(ids=queued, reason=reason)) + len(
        executions_mark_lost(ids=running, reason=reason)
    )
    # Anything left (an execution already finished, or not held any more) must not keep capacity.
    leftover = list(
        ResourceAllocation.objects.filter(node_id=node_id, released_at__isnull=True)
        .exclude(execution__status__in=[S.QUEUED, S.RUNNING])
        .values_list("execution_id", flat=True)
    )
    capacity_release(holder_ids=leftover)
    return recovered


def executions_recover_offline() -> int:
    """Recover what offline nodes still hold (after the reaper or a shutdown, or if that was cut off)."""
    nodes = (
        Node.objects.filter(status=Node.Status.OFFLINE, executions__status__in=[S.QUEUED, S.RUNNING])
        .values_list("pk", "name")
        .distinct()
    )
    total = 0
    for node_id, name in nodes:
        count = executions_recover_node(node_id=node_id, reason=f"node {name} went offline")
        logger.warning("node %s is offline: %d execution(s) recovered", name, count)
        total += count
    return total


def executions_overdue_sweep(*, limit: int = 100) -> int:
    """Mark lost the running executions far past their timeout whose node is gone (no node, or offline and
    its recovery was cut off). On a live node the worker's liveness check is the authority: it kills what
    a dead attempt left running before the attempt is marked lost, which no sweep elsewhere can do."""
    # started_at + timeout + grace < now, computed in SQL per job
    overdue_after = ExpressionWrapper(
        F("started_at") + F("job__timeout_seconds") * timedelta(seconds=1) + OVERDUE_GRACE,
        output_field=DateTimeField(),
    )
    ids = list(
        Execution.objects.filter(status=S.RUNNING, started_at__isnull=False)
        .filter(Q(node__isnull=True) | Q(node__status=Node.Status.OFFLINE))
        .annotate(overdue_after=overdue_after)
        .filter(overdue_after__lt=timezone.now())
        .values_list("pk", flat=True)[:limit]
    )
    with transaction.atomic():
        return len(
            executions_mark_lost(ids=ids, reason="no result long after its timeout; its worker vanished")
        )
