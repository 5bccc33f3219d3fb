"""Reads of the history at scale: the main queries use indexes (no sequential scan of the executions or
their log chunks), and the semantics that bought (capped list counts, windowed totals, hourly counts).

60,000 executions (and a log chunk for each of the newest thousand) are loaded by COPY and ANALYZEd, then
the real endpoints are called (the execution list and its filters, dead letters, the dashboard, /metrics,
an execution's log) with their SQL captured, and every statement that reads jobs_execution (any partition)
or monitoring_executionlogchunk is EXPLAINed: a Seq Scan node on them fails the test, naming the statement.
At a million rows such a scan is most of the request (bench/history_scale.py, docs/benchmarks.md §7).

EXPECTED TO FAIL until jobs.Execution's Meta.indexes has `execution_created` ((created_at, id): the list's
default order, ?since=/?until=, the lateness histogram); see REQUIRED_INDEXES.

Every execution's slot (scheduled_for, the partition key) is "now", so one monthly partition holds them
all whatever the day of the month: the plans are those of a big partition, which is what a million rows
make of every month (otherwise, early in a month, the planner rightly reads the small current month
whole). Empty partitions (the months ahead) are not judged. One sequential scan is allowed: the list's
capped count (jobs.api.pagination), a Seq Scan under a Limit that stops at COUNT_AHEAD + 1 matching rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.api import pagination
from jobs.models import Execution, Job
from monitoring.models import ExecutionHourlyCount
from monitoring.selectors.dashboard import dashboard_data
from monitoring.selectors.summary import executions_by_status
from nodes.models import Node
from tests.factories import JobFactory, NodeFactory

pytestmark = pytest.mark.django_db

EXECUTIONS = 60_000
JOBS = 200
BIG_TABLES = ("jobs_execution", "monitoring_executionlogchunk")
TINY = 500  # rows: a partition this small (next month's, say) is read whole, whatever the indexes
REQUIRED_INDEXES = {"execution_created": "jobs_execution (created_at, id)"}
STATUSES = ["succeeded"] * 90 + ["failed"] * 5 + ["retrying", "timed_out", "lost", "dead", "cancelled"]


def _rows(jobs: list[int], nodes: list[int]) -> Iterator[tuple[Any, ...]]:
    """Executions over 30 days, denser recently; a hundred active ones at the start."""
    rng = random.Random(13)
    now = datetime.now(UTC)
    for n in range(EXECUTIONS):
        created = now - timedelta(days=30 * (1 - rng.random() ** 0.5), seconds=60)
        status = rng.choice(["pending", "queued", "running"]) if n < 100 else rng.choice(STATUSES)
        finished = None if n < 100 else created + timedelta(seconds=rng.randint(1, 60))
        slot = now - timedelta(microseconds=n)  # one partition holds them all (see the module's docstring)
        job, node = rng.choice(jobs), rng.choice(nodes)
        yield (job, node, slot, 1, "schedule", status, "", created, created, finished, "out\n", False, "")


def _load(jobs: list[int], nodes: list[int]) -> None:
    columns = (
        "job_id, node_id, scheduled_for, attempt, trigger, status, pending_reason, created_at, started_at,"
        " finished_at, output, output_truncated, error"
    )
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY jobs_execution ({columns}) FROM STDIN") as copy:
            for row in _rows(jobs, nodes):
                copy.write_row(row)
        cursor.execute(
            "INSERT INTO jobs_deadletter (job_id, execution_id, error, status, replay_count, created_at)"
            " SELECT job_id, id, '', 'open', 0, finished_at FROM jobs_execution WHERE status = 'dead'"
        )
        cursor.execute(
            'INSERT INTO monitoring_executionlogchunk (execution_id, scheduled_for, seq, "offset", text,'
            " created_at) SELECT id, scheduled_for, 0, 0, 'out', created_at FROM jobs_execution"
            " ORDER BY id DESC LIMIT 1000"
        )
        for table in ("jobs_execution", "jobs_deadletter", "monitoring_executionlogchunk"):
            cursor.execute(f"ANALYZE {table}")


def _missing_indexes() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs_execution'")
        present = {name for (name,) in cursor.fetchall()}
    return sorted(set(REQUIRED_INDEXES) - present)


@pytest.fixture
def history(make_user: Any) -> dict[str, Any]:
    """An operator, a plain user owning a tenth of the jobs, 5 nodes and EXECUTIONS executions."""
    operator = make_user("plans-op", "operator")
    user = make_user("plans-user", "submitter")
    others = make_user("plans-others", "submitter")
    for n in range(JOBS):
        JobFactory(owner=user if n % 10 == 0 else others)
    NodeFactory.create_batch(5)
    jobs, nodes = list(Job.objects.order_by("pk")), list(Node.objects.order_by("pk"))
    _load([job.pk for job in jobs], [node.pk for node in nodes])
    return {"operator": operator, "user": user, "job": jobs[0], "node": nodes[0]}


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _paths(history: dict[str, Any]) -> list[tuple[str, str]]:
    job, node = history["job"].pk, history["node"].pk
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(execution_id) FROM monitoring_executionlogchunk")
        (execution,) = cursor.fetchone()
    api = "/api/v1"
    return [
        ("operator", f"{api}/executions/"),
        ("user", f"{api}/executions/"),
        ("operator", f"{api}/executions/?job={job}"),
        ("user", f"{api}/executions/?job={job}"),
        ("operator", f"{api}/executions/?status=failed"),
        ("operator", f"{api}/executions/?status=failed&job={job}"),
        ("operator", f"{api}/executions/?since={since}"),
        ("operator", f"{api}/executions/?node={node}"),
        ("operator", f"{api}/dead-letters/"),
        ("user", f"{api}/dead-letters/"),
        ("operator", "/dashboard/fragment/"),
        ("user", "/dashboard/fragment/"),
        ("operator", f"{api}/metrics/"),
        ("operator", f"{api}/executions/{execution}/log/?offset=0"),
    ]


def _nodes(plan: dict[str, Any], parents: tuple[str, ...] = ()) -> Iterator[tuple[dict[str, Any], tuple]]:
    yield plan, parents
    for child in plan.get("Plans", []):
        yield from _nodes(child, (*parents, plan["Node Type"]))


def _allowed(node: dict[str, Any], parents: tuple[str, ...]) -> bool:
    """A Seq Scan under a Limit (through Appends): the capped count, which stops after COUNT_AHEAD + 1
    matching rows (COUNT_AHEAD / selectivity rows read, whatever the history holds)."""
    above = [parent for parent in parents if parent not in ("Append", "Subquery Scan")]
    return bool(above) and above[-1] == "Limit"


def _big_relations() -> dict[str, float]:
    """The big tables' partitions holding more than TINY rows (an empty month is read whole, fine): rows."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.reltuples FROM unnest(%s::regclass[]) AS big(rel),"
            " pg_partition_tree(big.rel) t JOIN pg_class c ON c.oid = t.relid"
            " WHERE t.isleaf AND c.reltuples > %s",
            [list(BIG_TABLES), TINY],
        )
        return dict(cursor.fetchall())


def _seq_scans(sql: str, big: dict[str, float]) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        (plan,) = cursor.fetchone()
    return [
        node["Relation Name"]
        for node, parents in _nodes(plan[0]["Plan"])
        if node["Node Type"] == "Seq Scan"
        and node.get("Relation Name") in big
        and not _allowed(node, parents)
    ]


def test_the_main_history_queries_scan_no_big_table(history: dict[str, Any], settings: Any) -> None:
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0  # each request computes its summary and dashboard
    clients = {"operator": _client(history["operator"]), "user": _client(history["user"])}
    checked, scans, big = 0, [], _big_relations()
    for who, path in _paths(history):
        with CaptureQueriesContext(connection) as captured:
            assert clients[who].get(path).status_code == 200, path
        for query in captured.captured_queries:
            sql = query["sql"]
            if not sql.startswith("SELECT") or not any(table in sql for table in BIG_TABLES):
                continue
            checked += 1
            scans += [
                f"{who} GET {path}: Seq Scan on {table} in {sql[:400]}" for table in _seq_scans(sql, big)
            ]
    assert checked >= 20  # the capture did see the history's queries
    assert not scans, f"missing indexes: {_missing_indexes() or 'none'}\n" + "\n".join(scans)


def test_the_fixture_is_what_the_plans_are_about(history: dict[str, Any]) -> None:
    """The plans above are only meaningful if the tables hold the rows and their statistics."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(c.reltuples) FROM pg_partition_tree('jobs_execution') t"
            " JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf"
        )
        (estimate,) = cursor.fetchone()
    assert estimate > EXECUTIONS * 0.9
    assert Job.objects.count() == JOBS
    assert Node.objects.count() == 5


def _execution(job: Job, status: str, finished_ago: timedelta | None) -> Execution:
    now = timezone.now()
    finished = now - finished_ago if finished_ago is not None else None
    return Execution.objects.create(
        job=job, scheduled_for=now, status=status, started_at=finished, finished_at=finished
    )


def test_dashboard_totals_are_active_now_and_finished_in_24h_through_the_hourly_counts(make_user):
    """The semantics the bounded reads bought (docs/monitoring.md): not every retained execution."""
    alice, bob = make_user("alice", "submitter"), make_user("bob", "submitter")
    operator = make_user("plans-op", "operator")
    mine, theirs = JobFactory(owner=alice), JobFactory(owner=bob)
    _execution(mine, "running", None)
    _execution(mine, "failed", timedelta(hours=3))  # a closed hour: counted once, then read from the table
    _execution(mine, "succeeded", timedelta(seconds=30))  # the open hour: read live
    _execution(mine, "succeeded", timedelta(days=2))  # before the 24 h: in no total
    _execution(theirs, "failed", timedelta(hours=3))

    for _ in range(2):  # the second read finds the hours filled
        data = dashboard_data(user=alice)
        assert data["totals"]["running"] == 1
        assert data["totals"]["failed"] == 1
        assert data["totals"]["succeeded"] == 1
        assert sum(point["failed"] for point in data["series"]) == 1
    assert dashboard_data(user=operator)["totals"]["failed"] == 2
    hour = (timezone.now() - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    stored = ExecutionHourlyCount.objects.filter(hour=hour).exclude(status="")
    assert sorted(stored.values_list("owner__username", "status", "count")) == [
        ("alice", "failed", 1),
        ("bob", "failed", 1),
    ]
    markers = ExecutionHourlyCount.objects.filter(owner=None, status="")
    assert markers.count() == markers.values("hour").distinct().count() >= 22  # each closed hour, once


def test_metrics_count_active_now_and_finished_in_the_window(settings):
    settings.SCHEDULER_METRICS_WINDOW_SECONDS = 3600
    job = JobFactory()
    _execution(job, "pending", None)
    _execution(job, "failed", timedelta(minutes=10))
    _execution(job, "failed", timedelta(hours=2))  # retained, but outside the window
    counts = executions_by_status(Execution.objects.all(), timezone.now() - timedelta(hours=1))
    assert counts["pending"] == 1
    assert counts["failed"] == 1
    assert counts["succeeded"] == 0


def test_the_execution_list_count_is_capped_and_next_still_right(make_user, monkeypatch):
    monkeypatch.setattr(pagination, "COUNT_AHEAD", 5)
    user = make_user("pager", "submitter")
    job = JobFactory(owner=user)
    for _ in range(8):
        _execution(job, "succeeded", timedelta(minutes=1))
    client = _client(user)

    first = client.get("/api/v1/executions/?limit=2").json()
    assert (first["count"], first["count_exact"], len(first["results"])) == (5, False, 2)
    assert first["next"] is not None
    near_end = client.get("/api/v1/executions/?limit=2&offset=4").json()
    assert (near_end["count"], near_end["count_exact"]) == (8, True)
    last = client.get("/api/v1/executions/?limit=2&offset=6").json()
    assert (last["count"], last["count_exact"], last["next"]) == (8, True, None)
    past = client.get("/api/v1/executions/?limit=2&offset=50").json()
    assert (past["count"], past["count_exact"], past["results"]) == (8, True, [])


def test_a_count_over_its_time_budget_is_a_lower_bound(make_user, monkeypatch):
    """A count that would read a long history stops at COUNT_BUDGET_MS; later statements are not limited."""
    monkeypatch.setattr(pagination, "COUNT_BUDGET_MS", 1)
    monkeypatch.setattr(pagination.QuerySet, "count", _slow_count)
    user = make_user("patient", "submitter")
    job = JobFactory(owner=user)
    for _ in range(3):
        _execution(job, "succeeded", timedelta(minutes=1))
    client = _client(user)

    page = client.get("/api/v1/executions/?limit=1").json()
    assert (page["count"], page["count_exact"], len(page["results"])) == (2, False, 1)
    assert page["next"] is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.05)")  # the request's timeout did not outlive its count


def _slow_count(self: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.2)")
    return 0
