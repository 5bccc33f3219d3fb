"""The autoscaling signal (desired workers per label set), its gauge and API, and `manage.py autoscale`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.models import Execution, Job
from jobs.services import job_create, job_trigger
from monitoring.autoscale import Autoscaler, Hysteresis, command_argv
from monitoring.metrics import metrics_exposition
from monitoring.selectors.autoscale import (
    LabelSetDemand,
    desired_workers,
    desired_workers_compute,
    selector_parse,
)
from nodes.models import Node
from tests.conftest import ROOT, Proc, subprocess_env, wait_for
from tests.factories import JobFactory, NodeFactory

S = Execution.Status
HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _clean_cache() -> Any:
    cache.clear()
    yield
    cache.clear()


def _executions(job: Job, *statuses: str) -> None:
    for status in statuses:
        Execution.objects.create(job=job, scheduled_for=timezone.now(), status=status)


def _node(**fields: Any) -> dict[str, Any]:
    base = {
        "labels": {}, "status": Node.Status.ONLINE, "cpu_capacity": Decimal(2), "memory_mb_capacity": 2048,
        "cpu_allocated": Decimal(0), "memory_mb_allocated": 0, "running_count": 0,
    }  # fmt: skip
    return {**base, **fields}


# --- the computation --------------------------------------------------------------------------


def test_desired_is_the_largest_dimension_over_the_typical_node():
    demand = LabelSetDemand(selector={}, executions=3, cpu=Decimal("5"), memory_mb=1000)
    nodes = [_node(), _node(cpu_capacity=Decimal(2)), _node(cpu_capacity=Decimal(16))]  # median: 2 cpu
    signal_ = desired_workers_compute(demand, nodes)
    assert (signal_.desired, signal_.worker_cpu, signal_.worker_memory_mb) == (3, 2.0, 2048)  # ceil(5/2)
    memory_bound = LabelSetDemand(selector={}, executions=1, cpu=Decimal("0.1"), memory_mb=5000)
    assert desired_workers_compute(memory_bound, nodes).desired == 3  # ceil(5000/2048)
    many_small = LabelSetDemand(selector={}, executions=9, cpu=Decimal("0.9"), memory_mb=90)
    assert desired_workers_compute(many_small, nodes).desired == 1
    assert desired_workers_compute(many_small, nodes, slots=2).desired == 5  # ceil(9 executions / 2 slots)


def test_desired_is_at_least_one_with_demand_and_at_least_the_busy_nodes():
    nodes = [_node(cpu_allocated=Decimal(1)), _node(running_count=1), _node(), _node(status="offline")]
    idle = desired_workers_compute(LabelSetDemand(selector={}), nodes)
    assert (idle.desired, idle.busy, idle.online) == (2, 2, 3)
    tiny = LabelSetDemand(selector={}, executions=1, cpu=Decimal(0), memory_mb=0)
    assert desired_workers_compute(tiny, [_node()]).desired == 1
    assert desired_workers_compute(tiny, []).desired == 1  # no node ever registered: start one
    assert desired_workers_compute(LabelSetDemand(selector={}), []).desired == 0


def test_the_typical_node_is_one_with_the_labels_online_else_registered_else_any():
    eu = {"region": "eu"}
    demand = LabelSetDemand(selector=eu, executions=1, cpu=Decimal(8), memory_mb=10)
    demand.sizes[(Decimal(8), 10)] = 1
    plain = _node(cpu_capacity=Decimal(1))
    offline_eu = _node(labels=eu, status="offline", cpu_capacity=Decimal(4))
    online_eu = _node(labels={**eu, "disk": "ssd"}, cpu_capacity=Decimal(8))
    assert desired_workers_compute(demand, [plain]).worker_cpu == 1.0
    assert desired_workers_compute(demand, [plain, offline_eu]).worker_cpu == 4.0
    best = desired_workers_compute(demand, [plain, offline_eu, online_eu])
    assert (best.worker_cpu, best.desired, best.too_large) == (8.0, 1, 0)
    assert desired_workers_compute(demand, [plain]).too_large == 1  # larger than a worker of that size


@pytest.mark.django_db
def test_demand_is_grouped_per_label_set_with_the_runtime_label_of_container_jobs(settings):
    NodeFactory(cpu_capacity=Decimal(2), memory_mb_capacity=1024)
    plain = JobFactory(cpu=Decimal("1.5"), memory_mb=100)
    eu = JobFactory(cpu=Decimal(1), memory_mb=100, node_selector={"region": "eu"})
    boxed = JobFactory(
        kind=Job.Kind.CONTAINER,
        cpu=Decimal(1),
        memory_mb=64,
        payload={"image": "busybox", "command": ["true"]},
    )
    _executions(plain, S.PENDING, S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED)
    _executions(eu, S.PENDING)
    _executions(boxed, S.PENDING, S.PENDING, S.PENDING)
    by_labels = {s.labels: s for s in desired_workers()}
    assert set(by_labels) == {"", "region=eu", "runtime=docker"}
    assert (by_labels[""].executions, by_labels[""].pending, by_labels[""].cpu) == (3, 1, 4.5)
    assert by_labels[""].desired == 3  # 4.5 cpu over 2-cpu nodes
    assert by_labels["region=eu"].desired == 1  # no eu node: sized like the registered ones
    assert by_labels["runtime=docker"].desired == 2
    only = desired_workers({"gpu": "yes"})
    assert [(s.labels, s.desired) for s in only] == [("gpu=yes", 0)]


@pytest.mark.django_db
def test_the_gauge_and_the_api(make_user, settings):
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0
    NodeFactory(cpu_capacity=Decimal(1), memory_mb_capacity=1024)
    _executions(JobFactory(cpu=Decimal(1)), S.PENDING, S.PENDING, S.RUNNING)
    assert 'scheduler_desired_workers{labels=""} 3.0' in metrics_exposition().decode()

    operator, viewer = make_user("op", "operator"), make_user("vee", "viewer")
    assert APIClient().get("/api/v1/autoscale/").status_code == 401
    client = APIClient()
    client.force_login(viewer)
    assert client.get("/api/v1/autoscale/").status_code == 403
    client.force_login(operator)
    body = client.get("/api/v1/autoscale/").json()
    assert [(s["labels"], s["desired"], s["pending"]) for s in body["label_sets"]] == [("", 3, 2)]
    one = client.get("/api/v1/autoscale/", {"labels": "region=eu"}).json()["label_sets"]
    assert [(s["labels"], s["desired"]) for s in one] == [("region=eu", 0)]
    assert client.get("/api/v1/autoscale/", {"labels": "nonsense"}).status_code == 400


# --- hysteresis and the command -----------------------------------------------------------------


def test_hysteresis_scales_up_at_once_and_down_after_the_cooldown():
    h = Hysteresis(cooldown=10)
    assert h.decide(2, now=0) == 2  # nothing applied yet: act on the first value
    h.applied(2)
    assert h.decide(2, now=1) is None
    assert h.decide(5, now=2) == 5  # up at once
    h.applied(5)
    assert h.decide(1, now=3) is None  # down: not yet
    assert h.decide(3, now=8) is None
    assert h.scale_down_in(8) == 5
    assert h.decide(1, now=13) == 3  # held below 5 for 10 s: to the highest value seen meanwhile
    h.applied(3)
    assert h.decide(1, now=14) is None
    assert h.decide(3, now=15) is None  # demand came back: the countdown starts again
    assert h.decide(1, now=16) is None
    assert h.decide(1, now=25) is None
    assert h.decide(1, now=26) == 1


def test_command_words_get_the_count_and_no_shell():
    assert command_argv("docker compose up -d --scale 'worker={n}'", 3) == [
        "docker", "compose", "up", "-d", "--scale", "worker=3",
    ]  # fmt: skip
    assert command_argv("echo '{n}; rm -rf /'", 2) == ["echo", "2; rm -rf /"]  # one word, never a shell


def test_a_failing_command_is_logged_and_tried_again_on_the_next_change():
    now = [0.0]
    lines: list[str] = []
    signals = iter([2, 2, 3, 3])
    scaler = Autoscaler(
        template=f"{sys.executable} -c 'import sys; sys.exit(int(sys.argv[1]) < 3)' {{n}}",
        minimum=1, maximum=10, selector={}, cooldown=60, log=lines.append, clock=lambda: now[0],
    )  # fmt: skip
    scaler.signal = lambda: desired_workers_compute(
        LabelSetDemand(selector={}, executions=next(signals)), [], slots=1
    )
    assert scaler.tick() is False  # 2: the command exits 1
    assert any("command failed (exit 1)" in line for line in lines)
    now[0] = 1
    assert scaler.tick() is None  # same target, within the cooldown: not run again
    assert scaler.tick() is True  # 3: a change, run again (and it succeeds)
    assert scaler.hysteresis.current == 3
    assert scaler.tick() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min", "3", "--max", "2", "--command", "x {n}"], "--max at least 1 and --min"),
        (["--min", "-1", "--max", "2", "--command", "x {n}"], "--min must be 0 or more"),
        (["--min", "0", "--max", "2", "--command", "scale 'unterminated {n}"], "--command: No closing"),
        (["--min", "0", "--max", "2", "--command", "scale worker"], "contain {n}"),
        (["--min", "0", "--max", "2", "--command", "x {n}", "--labels", "region"], "--labels: 'region'"),
        (["--min", "0", "--max", "2", "--command", "x {n}", "--interval", "0"], "--interval"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message):
    with pytest.raises(CommandError, match=message.replace("{", r"\{").replace("}", r"\}")):
        call_command("autoscale", *args)


@pytest.mark.django_db(transaction=True)  # the command closes old connections, as a long loop must
def test_once_runs_the_command_with_the_clamped_count(tmp_path, capsys):
    out = tmp_path / "n"
    script = f"import sys; open({str(out)!r}, 'w').write(sys.argv[1])"
    call_command(
        "autoscale",
        "--min",
        "2",
        "--max",
        "4",
        "--once",
        "--command",
        f"{sys.executable} -c {script!r} {{n}}",
    )
    assert out.read_text() == "2"  # nothing to do: the minimum
    assert "scaled to 2" in capsys.readouterr().out
    with pytest.raises(CommandError, match="failed"):
        call_command("autoscale", "--min", "1", "--max", "1", "--once", "--command", "false {n}")


def test_selector_parse():
    assert selector_parse(" region=eu, gpu=yes ") == {"region": "eu", "gpu": "yes"}
    assert selector_parse("") == {}
    with pytest.raises(ValueError, match="not key=value"):
        selector_parse("=x")


# --- real workers started and stopped by the command ----------------------------------------------


def _workers(folder: Path) -> list[dict[str, Any]]:
    path = folder / "workers.json"
    return json.loads(path.read_text()) if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_every_worker_started(folder: Path) -> None:
    path = folder / "started.json"
    for pid in json.loads(path.read_text()) if path.exists() else []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.django_db(transaction=True)
def test_the_command_starts_workers_for_a_backlog_and_stops_them_when_it_drains(make_user, tmp_path):
    folder = tmp_path / "workers"
    folder.mkdir()
    reconcile = f"{sys.executable} {HERE / 'reconcile_workers.py'} {{n}} {folder}"
    env = subprocess_env(
        SCHEDULER_NODE_CPU="1", SCHEDULER_NODE_MEMORY_MB="1024", SCHEDULER_HEARTBEAT_SECONDS="1"
    )
    argv = [
        sys.executable, str(ROOT / "manage.py"), "autoscale", "--min", "1", "--max", "3", "--interval", "0.5",
        "--cooldown", "4", "--command", reconcile,
    ]  # fmt: skip
    scaler = Proc(argv, env, tmp_path / "autoscale.log")
    try:
        wait_for(
            lambda: Node.objects.filter(status="online").count() == 1, timeout=60, what="the first worker"
        )
        owner = make_user("op", "operator", run_shell=True)
        job = job_create(
            owner=owner, name="backlog", kind="shell", payload={"command": ["sleep", "4"]}, cpu="1"
        )
        executions = [job_trigger(job=job) for _ in range(6)]  # one fits a 1-cpu node at a time
        assert Execution.objects.filter(status=S.PENDING).exists()
        wait_for(lambda: len(_workers(folder)) == 3, timeout=30, what="scaling up to --max")
        # One worker alone would take 16 s to bring the backlog under 3 nodes' worth: time to see all three.
        online = Node.objects.filter(status="online")
        wait_for(lambda: online.count() == 3, timeout=60, what="three workers online")
        done = Execution.objects.filter(pk__in=[e.pk for e in executions], status=S.SUCCEEDED)
        wait_for(lambda: done.count() == 6, timeout=90, what="the backlog to drain")
        wait_for(lambda: len(_workers(folder)) == 1, timeout=30, what="scaling down after the cooldown")
        started = json.loads((folder / "started.json").read_text())
        wait_for(
            lambda: sum(_alive(pid) for pid in started) == 1, timeout=60, what="the extra workers to stop"
        )
        wait_for(
            lambda: Node.objects.filter(status="online").count() == 1, timeout=60, what="their nodes offline"
        )
        log = scaler.log()
        assert "scaling ? -> 1" in log
        assert "scaling 1 -> 3" in log
        assert re.search(r"scaling [23] -> 1:", log)  # down in one or two steps, as the backlog drained
    finally:
        scaler.stop(timeout=10)
        _kill_every_worker_started(folder)
