"""Resource-aware placement: reserve a demand's cpu and memory on an online node whose labels match.

Counters: each node row carries what its active allocations reserve (`cpu_allocated`,
`memory_mb_allocated`). A reservation is a conditional UPDATE of the chosen node's counters
(`... WHERE cpu_allocated + x <= cpu_capacity`) written with the allocation row in the caller's
transaction, so placements on different nodes never wait for each other, the cost of one placement does not
grow with the number of nodes, and a node is never over-committed; a placement that loses the race for a
node tries the next one. Releasing decrements. `capacity_counters_repair` recomputes counters from the
allocation rows (the record) if they ever drift.

Candidates: in a cluster of more than SCHEDULER_PLACEMENT_CANDIDATES (k, default 4) nodes whose labels
match, a placement looks at k of them chosen at random, and at all of them only if none of those fits (the
power of k choices: nearly the balance of looking at all, at a cost that does not grow with the cluster).

Policy: a `PlacementPolicy` subclass orders the nodes that fit, best first, twice: `order_sql` (an ORDER BY
over nodes_node's columns) when one demand is placed, in the same statement that reserves, and `sort_key`
(the same order in Python) when a batch is planned in memory. The default, `LeastLoadedPolicy`, takes the
node with the largest share of its CPU still free (then of its memory, then by name), which spreads work
evenly over nodes of different sizes. SCHEDULER_PLACEMENT_POLICY names another (a dotted path).

Callers (the jobs core) pass demands, never executions: the holder id is only written on the allocation row.
Each transaction reserves through one call; a batch locks its nodes in id order, so batches never deadlock.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any, ClassVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils.module_loading import import_string

from nodes.models import Node
from scheduler_project.db import sql_execute

logger = logging.getLogger(__name__)
REASON_MAX_LENGTH = 255
ONLINE_REFRESH_SECONDS = 2.0  # how stale this process's list of online nodes (for sampling) may be
_online: dict[str, Any] = {"nodes": [], "matching": {}, "until": 0.0}
RACE_ROUNDS = 3  # a placement that lost its node to another one tries again this often


def node_queue_name(name: str) -> str:
    """The broker queue only the node `name` consumes."""
    return f"node.{name}"


@dataclass(frozen=True)
class Demand:
    """What one holder (an execution) needs: cpu, memory and the labels a node must have."""

    holder_id: int
    cpu: Decimal
    memory_mb: int
    selector: Mapping[str, Any]


@dataclass(frozen=True)
class Reservation:
    """Capacity reserved on a node (its counters raised, its allocation row written)."""

    node_id: int
    node_name: str

    @property
    def queue_name(self) -> str:
        return node_queue_name(self.node_name)


@dataclass(frozen=True)
class NoFit:
    """Nothing fits now; `reason` says why, for Execution.pending_reason."""

    reason: str


Placement = Reservation | NoFit


@dataclass
class Room:
    """An online node as a batch plan sees it: capacity and what is allocated (updated as the plan books)."""

    id: int
    name: str
    labels: dict[str, Any]
    cpu_capacity: Decimal
    cpu_allocated: Decimal
    memory_mb_capacity: int
    memory_mb_allocated: int

    @property
    def free_cpu(self) -> Decimal:
        return self.cpu_capacity - self.cpu_allocated

    @property
    def free_memory_mb(self) -> int:
        return self.memory_mb_capacity - self.memory_mb_allocated

    @property
    def free_cpu_share(self) -> Decimal | None:
        return self.free_cpu / self.cpu_capacity if self.cpu_capacity else None

    @property
    def free_memory_share(self) -> float | None:
        return self.free_memory_mb / self.memory_mb_capacity if self.memory_mb_capacity else None

    def matches(self, selector: Mapping[str, Any]) -> bool:
        return labels_match(self.labels, selector)

    def fits(self, demand: Demand) -> bool:
        return (
            self.matches(demand.selector)
            and self.free_cpu >= demand.cpu
            and self.free_memory_mb >= demand.memory_mb
        )


def _json_equal(a: Any, b: Any) -> bool:
    # jsonb equality: true is not 1, 1 is 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def labels_match(labels: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    """labels @> selector, as PostgreSQL's jsonb containment decides it for flat label objects."""
    return all(key in labels and _json_equal(labels[key], value) for key, value in selector.items())


def _desc_none_last(value: Decimal | float | None) -> tuple[int, Decimal | float]:
    return (1, 0) if value is None else (0, -value)


class PlacementPolicy:
    """Orders fitting nodes best first; subclass and set both `order_sql` and `sort_key` (same order)."""

    order_sql: ClassVar[str] = "id"

    def sort_key(self, room: Room) -> tuple[Any, ...]:
        return (room.id,)


class LeastLoadedPolicy(PlacementPolicy):
    """The node with the largest free CPU share, then the largest free memory share, then by name."""

    order_sql = (
        "(cpu_capacity - cpu_allocated) / NULLIF(cpu_capacity, 0) DESC NULLS LAST, "
        "(memory_mb_capacity - memory_mb_allocated)::float8 / NULLIF(memory_mb_capacity, 0) DESC NULLS LAST, "
        'name COLLATE "C"'
    )

    def sort_key(self, room: Room) -> tuple[Any, ...]:
        return (_desc_none_last(room.free_cpu_share), _desc_none_last(room.free_memory_share), room.name)


@cache
def _policy_class(path: str) -> type[PlacementPolicy]:
    return import_string(path)


def placement_policy() -> PlacementPolicy:
    """The configured placement policy (LeastLoadedPolicy unless SCHEDULER_PLACEMENT_POLICY names another)."""
    path = getattr(settings, "SCHEDULER_PLACEMENT_POLICY", "nodes.placement.LeastLoadedPolicy")
    return _policy_class(path)()


def format_labels(labels: Mapping[str, Any]) -> str:
    """region=eu,gpu=no (sorted) for messages."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _truncate(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX_LENGTH else reason[: REASON_MAX_LENGTH - 3] + "..."


def _with_labels(selector: Mapping[str, Any]) -> str:
    return f" with labels {format_labels(selector)}" if selector else ""


def _no_fit_reason(demand: Demand, rooms: Sequence[Room]) -> str:
    matching = [room for room in rooms if room.matches(demand.selector)]
    if not matching:
        return _truncate(f"no online node{_with_labels(demand.selector)}")
    if not any(r.cpu_capacity >= demand.cpu and r.memory_mb_capacity >= demand.memory_mb for r in matching):
        # Larger than every node there is: more of these nodes will not help, a larger one will.
        cpu = max(r.cpu_capacity for r in matching)
        memory_mb = max(r.memory_mb_capacity for r in matching)
        return _truncate(
            f"waiting for a larger node: no online node{_with_labels(demand.selector)} has {demand.cpu} cpu "
            f"and {demand.memory_mb} MB (largest online: {cpu} cpu, {memory_mb} MB)"
        )
    best = max(matching, key=lambda r: (r.free_cpu, r.free_memory_mb))
    return _truncate(
        f"waiting for capacity: no online node{_with_labels(demand.selector)} has {demand.cpu} cpu and "
        f"{demand.memory_mb} MB free (most free: {best.name} with {best.free_cpu} cpu, "
        f"{best.free_memory_mb} MB)"
    )


# --- reserve ----------------------------------------------------------------------------------

_ROOM_COLUMNS = "id, name, labels, cpu_capacity, cpu_allocated, memory_mb_capacity, memory_mb_allocated"


def _rooms(selector: Mapping[str, Any] | None = None) -> list[Room]:
    sql = f"SELECT {_ROOM_COLUMNS} FROM nodes_node WHERE status = 'online'"  # noqa: S608 - constant
    params: list[Any] = []
    if selector:
        sql += " AND labels @> %s::jsonb"
        params.append(json.dumps(dict(selector)))
    rows = sql_execute(sql, params)
    return [
        Room(
            id=pk,
            name=name,
            labels=json.loads(labels) if isinstance(labels, str) else labels,
            cpu_capacity=cpu_cap,
            cpu_allocated=cpu_alloc,
            memory_mb_capacity=mem_cap,
            memory_mb_allocated=mem_alloc,
        )
        for pk, name, labels, cpu_cap, cpu_alloc, mem_cap, mem_alloc in rows
    ]


_RESERVE_ONE = """
WITH chosen AS (
    UPDATE nodes_node AS n
    SET cpu_allocated = n.cpu_allocated + %(cpu)s, memory_mb_allocated = n.memory_mb_allocated + %(mem)s
    WHERE n.id = (
        SELECT c.id FROM nodes_node AS c
        WHERE c.status = 'online' AND c.labels @> %(selector)s::jsonb {among}
          AND c.cpu_allocated + %(cpu)s <= c.cpu_capacity
          AND c.memory_mb_allocated + %(mem)s <= c.memory_mb_capacity
        ORDER BY {order} LIMIT 1
    )
      AND n.status = 'online'
      AND n.cpu_allocated + %(cpu)s <= n.cpu_capacity
      AND n.memory_mb_allocated + %(mem)s <= n.memory_mb_capacity
    RETURNING n.id, n.name
),
alloc AS (
    INSERT INTO nodes_resourceallocation (node_id, execution_id, cpu, memory_mb, allocated_at, released_at)
    SELECT id, %(holder)s, %(cpu)s, %(mem)s, clock_timestamp(), NULL FROM chosen
    ON CONFLICT (execution_id) DO UPDATE SET node_id = EXCLUDED.node_id, cpu = EXCLUDED.cpu,
        memory_mb = EXCLUDED.memory_mb, allocated_at = EXCLUDED.allocated_at, released_at = NULL
    RETURNING node_id
)
SELECT id, name FROM chosen
"""

# Allocation rows for a planned batch; a holder placed before (released row) reuses its row.
_INSERT_ALLOCATIONS = """
INSERT INTO nodes_resourceallocation (node_id, execution_id, cpu, memory_mb, allocated_at, released_at)
SELECT v.node_id, v.holder, v.cpu, v.mem, clock_timestamp(), NULL
FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[], %s::bigint[]) AS v(node_id, holder, cpu, mem)
ON CONFLICT (execution_id) DO UPDATE SET node_id = EXCLUDED.node_id, cpu = EXCLUDED.cpu,
    memory_mb = EXCLUDED.memory_mb, allocated_at = EXCLUDED.allocated_at, released_at = NULL
"""

_BOOK = """
UPDATE nodes_node AS n
SET cpu_allocated = n.cpu_allocated + v.cpu, memory_mb_allocated = n.memory_mb_allocated + v.mem
FROM unnest(%s::bigint[], %s::numeric[], %s::bigint[]) AS v(id, cpu, mem)
WHERE n.id = v.id AND n.status = 'online'
  AND n.cpu_allocated + v.cpu <= n.cpu_capacity AND n.memory_mb_allocated + v.mem <= n.memory_mb_capacity
RETURNING n.id
"""


def capacity_reserve(*, demands: Sequence[Demand]) -> list[Placement]:
    """Reserve each demand on a fitting online node (or say why not); call inside transaction.atomic().

    Every holder must have no active allocation (a fresh execution, or one whose allocation was released).
    """
    if not demands:
        return []
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("capacity_reserve must run inside transaction.atomic()")
    if len(demands) == 1:
        return [_reserve_one(demands[0])]
    return _reserve_many(demands)


def _online_nodes() -> list[tuple[int, dict[str, Any]]]:
    """(id, labels) of the online nodes as this process saw them lately (refreshed every few seconds)."""
    now = time.monotonic()
    if now >= _online["until"]:
        rows = sql_execute("SELECT id, labels FROM nodes_node WHERE status = 'online'")
        _online["nodes"] = [(pk, _labels(labels)) for pk, labels in rows]
        _online["matching"] = {}
        _online["until"] = now + ONLINE_REFRESH_SECONDS
    return _online["nodes"]


def _labels(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _candidates_k() -> int:
    return int(getattr(settings, "SCHEDULER_PLACEMENT_CANDIDATES", 4))


def _sample(selector: Mapping[str, Any]) -> list[int] | None:
    """Up to k random ids among the online nodes whose labels match; None: consider all of them (a cluster
    that small, or sampling off). The power of k choices: the best of a few random nodes spreads load almost
    as well as the best of all, at a cost that does not grow with the cluster."""
    k = _candidates_k()
    if k <= 0:
        return None
    nodes = _online_nodes()
    key = _selector_key(selector)
    matching = _online["matching"].get(key)
    if matching is None:  # once per selector and refresh: a placement costs the same with 1 or 1,000 nodes
        matching = _online["matching"][key] = [pk for pk, labels in nodes if labels_match(labels, selector)]
    return random.sample(matching, k) if len(matching) > k else None  # noqa: S311 - load spreading


def _reserve_one(demand: Demand) -> Placement:
    policy = placement_policy()
    params: dict[str, Any] = {
        "cpu": demand.cpu,
        "mem": demand.memory_mb,
        "selector": json.dumps(dict(demand.selector)),
        "holder": demand.holder_id,
    }
    sample = _sample(demand.selector)
    if sample is not None:
        among = "AND c.id IN (" + ", ".join(f"%(c{i})s" for i in range(len(sample))) + ")"
        sampled = {**params, **{f"c{i}": pk for i, pk in enumerate(sample)}}
        rows = sql_execute(_RESERVE_ONE.format(order=policy.order_sql, among=among), sampled)
        if rows:
            return Reservation(node_id=rows[0][0], node_name=rows[0][1])
        # None of the sampled nodes fits (full, gone, or a race): look at all of them.
    sql = _RESERVE_ONE.format(order=policy.order_sql, among="")
    for _ in range(RACE_ROUNDS):
        rows = sql_execute(sql, params)
        if rows:
            return Reservation(node_id=rows[0][0], node_name=rows[0][1])
        rooms = _rooms(demand.selector)
        if not any(room.fits(demand) for room in rooms):
            return NoFit(_no_fit_reason(demand, rooms))
        # A node fits now: another placement took the one we chose meanwhile. Choose again.
    return NoFit(_no_fit_reason(demand, _rooms(demand.selector)))


def _selector_key(selector: Mapping[str, Any]) -> str:
    return json.dumps(dict(selector), sort_keys=True)


def _covered(demand: Demand, too_large: Sequence[tuple[Decimal, int]]) -> bool:
    """Whether the demand needs at least the cpu and the memory of one that found no room."""
    return any(demand.cpu >= cpu and demand.memory_mb >= memory_mb for cpu, memory_mb in too_large)


def _least_demands(demands: Sequence[Demand], todo: Sequence[int]) -> dict[str, tuple[Decimal, int]]:
    """Per selector, the least cpu and the least memory any of its demands needs."""
    least: dict[str, tuple[Decimal, int]] = {}
    for index in todo:
        demand = demands[index]
        key = _selector_key(demand.selector)
        cpu, memory_mb = least.get(key, (demand.cpu, demand.memory_mb))
        least[key] = (min(cpu, demand.cpu), min(memory_mb, demand.memory_mb))
    return least


def _plan(demands: Sequence[Demand], todo: Sequence[int], rooms: list[Room]) -> dict[int, list[int]]:
    """Book each demand on the best room that still fits, in memory; node id -> demand indexes.

    Each demand looks at k random rooms whose labels match (all of them in a small cluster), and at all of
    them only when none of those fits: the batch costs O(demands x k), not O(demands x nodes). Rooms only
    fill up during a plan, so once a demand found no room among its selector's, a later one of that
    selector needing as much cpu and memory or more has none either and is skipped without a scan: on a
    full cluster the scans are one per selector and size, not one per demand. A scan also drops the rooms
    too full for the smallest demand of the selector, which no later demand can use."""
    policy = placement_policy()
    k = _candidates_k()
    plan: dict[int, list[int]] = {}
    matching: dict[str, list[Room]] = {}
    too_large: dict[str, list[tuple[Decimal, int]]] = {}
    least = _least_demands(demands, todo)
    for index in todo:
        demand = demands[index]
        key = _selector_key(demand.selector)
        if key not in matching:
            matching[key] = [room for room in rooms if room.matches(demand.selector)]
            too_large[key] = []
        if _covered(demand, too_large[key]):
            continue
        pool = matching[key]
        sampled = random.sample(pool, k) if 0 < k < len(pool) else pool  # noqa: S311 - load spreading
        fitting = [room for room in sampled if room.fits(demand)]
        if not fitting and sampled is not pool:
            cpu, memory_mb = least[key]
            pool[:] = [room for room in pool if room.free_cpu >= cpu and room.free_memory_mb >= memory_mb]
            fitting = [room for room in pool if room.fits(demand)]
        if not fitting:
            too_large[key].append((demand.cpu, demand.memory_mb))
            continue
        room = min(fitting, key=policy.sort_key)
        room.cpu_allocated += demand.cpu
        room.memory_mb_allocated += demand.memory_mb
        plan.setdefault(room.id, []).append(index)
    return plan


def _book(plan: Mapping[int, Sequence[int]], demands: Sequence[Demand]) -> set[int]:
    """Raise the counters of the planned nodes (locked in id order) where the plan still fits."""
    node_ids = sorted(plan)
    cpus = [sum((demands[i].cpu for i in plan[n]), Decimal(0)) for n in node_ids]
    mems = [sum(demands[i].memory_mb for i in plan[n]) for n in node_ids]
    sql_execute("SELECT id FROM nodes_node WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE", [node_ids])
    return {row[0] for row in sql_execute(_BOOK, [node_ids, cpus, mems])}


def _reserve_many(demands: Sequence[Demand]) -> list[Placement]:
    results: list[Placement | None] = [None] * len(demands)
    todo = list(range(len(demands)))
    rooms: list[Room] = []
    for _ in range(RACE_ROUNDS):
        rooms = _rooms()
        plan = _plan(demands, todo, rooms)
        if not plan:
            break
        won = _book(plan, demands)
        names = {room.id: room.name for room in rooms}
        todo = [i for node_id, indexes in plan.items() if node_id not in won for i in indexes]
        for node_id in won:
            for index in plan[node_id]:
                results[index] = Reservation(node_id=node_id, node_name=names[node_id])
        if not todo:
            break
    placed = [(i, r) for i, r in enumerate(results) if isinstance(r, Reservation)]
    if placed:
        sql_execute(
            _INSERT_ALLOCATIONS,
            [
                [r.node_id for _, r in placed],
                [demands[i].holder_id for i, _ in placed],
                [demands[i].cpu for i, _ in placed],
                [demands[i].memory_mb for i, _ in placed],
            ],
        )
    fresh = _rooms() if todo else rooms
    reasons = _NoFitReasons(fresh)
    return [r if r is not None else NoFit(reasons.of(demands[i])) for i, r in enumerate(results)]


class _NoFitReasons:
    """Why nothing fits, once per selector and size over the same rooms: a batch's unplaced demands cost
    O(demands + selectors x sizes x nodes), not O(demands x nodes)."""

    def __init__(self, rooms: Sequence[Room]) -> None:
        self.rooms = rooms
        self.matching: dict[str, list[Room]] = {}
        self.reasons: dict[tuple[str, str, int], str] = {}

    def of(self, demand: Demand) -> str:
        key = _selector_key(demand.selector)
        size = (key, str(demand.cpu), demand.memory_mb)  # str: 0.5 and 0.50 read differently in the reason
        if size not in self.reasons:
            if key not in self.matching:
                self.matching[key] = [room for room in self.rooms if room.matches(demand.selector)]
            self.reasons[size] = _no_fit_reason(demand, self.matching[key])
        return self.reasons[size]


# --- release and repair -----------------------------------------------------------------------


def capacity_release_sql(holders: str) -> str:
    """CTEs (to follow a WITH) that release the active allocations of the holder ids `holders` selects and
    lower their nodes' counters; `released_count` then gives how many were released. For a caller that
    frees capacity in the same statement as its own change (the jobs core's transitions)."""
    return f"""
released AS (
    UPDATE nodes_resourceallocation SET released_at = clock_timestamp()
    WHERE execution_id IN ({holders}) AND released_at IS NULL
    RETURNING node_id, cpu, memory_mb
),
released_sum AS (
    SELECT node_id, SUM(cpu) AS cpu, SUM(memory_mb) AS mem, COUNT(*) AS n FROM released GROUP BY node_id
),
released_nodes AS (
    UPDATE nodes_node AS rn
    SET cpu_allocated = GREATEST(rn.cpu_allocated - rs.cpu, 0),
        memory_mb_allocated = GREATEST(rn.memory_mb_allocated - rs.mem, 0)
    FROM released_sum AS rs WHERE rn.id = rs.node_id
    RETURNING rn.id
),
released_count AS (SELECT COALESCE(SUM(n), 0)::int AS n FROM released_sum)"""  # noqa: S608 - no values


_RELEASE = f"WITH {capacity_release_sql('SELECT unnest(%s::bigint[])')} SELECT n FROM released_count"  # noqa: S608


def capacity_release(*, holder_ids: Sequence[int]) -> int:
    """Release the holders' active allocations and lower their nodes' counters; how many were released.

    One statement (atomic by itself, idempotent): call it inside the transaction that ends the holder.
    """
    if not holder_ids:
        return 0
    rows = sql_execute(_RELEASE, [list(holder_ids)])
    return int(rows[0][0]) if rows else 0


_DRIFT = """
SELECT n.id FROM nodes_node AS n
LEFT JOIN (
    SELECT node_id, SUM(cpu) AS cpu, SUM(memory_mb) AS mem FROM nodes_resourceallocation
    WHERE released_at IS NULL GROUP BY node_id
) AS s ON s.node_id = n.id
WHERE n.cpu_allocated <> COALESCE(s.cpu, 0) OR n.memory_mb_allocated <> COALESCE(s.mem, 0)
"""

_REPAIR_ONE = """
UPDATE nodes_node AS n SET cpu_allocated = s.cpu, memory_mb_allocated = s.mem
FROM (
    SELECT COALESCE(SUM(cpu), 0) AS cpu, COALESCE(SUM(memory_mb), 0) AS mem
    FROM nodes_resourceallocation WHERE node_id = %(id)s AND released_at IS NULL
) AS s
WHERE n.id = %(id)s AND (n.cpu_allocated <> s.cpu OR n.memory_mb_allocated <> s.mem)
RETURNING n.name, n.cpu_allocated, n.memory_mb_allocated
"""


def capacity_counters_repair() -> list[str]:
    """Set every node's counters to the sum of its active allocations where they differ; repaired names."""
    with connection.cursor() as cursor:
        cursor.execute(_DRIFT)
        suspects = [row[0] for row in cursor.fetchall()]
    repaired = []
    for node_id in suspects:
        # Lock the node first: the sum is then read after any placement on it committed (no lost update).
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT id FROM nodes_node WHERE id = %s FOR UPDATE", [node_id])
            cursor.execute(_REPAIR_ONE, {"id": node_id})
            row = cursor.fetchone()
        if row is not None:
            logger.warning("node %s: allocated counters drifted; repaired to %s cpu, %s MB", *row)
            repaired.append(row[0])
    return repaired


def placement_impossible_reason(*, cpu: Decimal, memory_mb: int, node_selector: dict) -> str | None:
    """Why no registered node (any status) could ever hold this request; None if one could or none exist."""
    nodes = Node.objects.all()
    if not nodes.exists():
        return None  # the first worker has not started yet: the job waits as pending
    matching = nodes.filter(labels__contains=node_selector or {})
    if not matching.exists():
        return _truncate(f"no registered node has the labels {format_labels(node_selector)}")
    if matching.filter(cpu_capacity__gte=cpu, memory_mb_capacity__gte=memory_mb).exists():
        return None
    largest = matching.aggregate(cpu=Max("cpu_capacity"), memory_mb=Max("memory_mb_capacity"))
    return _truncate(
        f"no registered node{_with_labels(node_selector)} is large enough for {cpu} cpu and "
        f"{memory_mb} MB (largest: {largest['cpu']} cpu, {largest['memory_mb']} MB)"
    )
