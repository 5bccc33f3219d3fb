"""Prometheus exposition: a custom collector that turns the cluster summary into metric families at scrape.

The values are read from PostgreSQL and the broker when scraped (through the few-seconds summary cache),
never counted in process memory, so every gunicorn process answers alike and worker processes need no
multiprocess directory. Consequences, documented for whoever writes the dashboards:

- executions by status (`scheduler_executions`) counts pending, queued and running executions now, and
  the other statuses among executions finished in the trailing window (SCHEDULER_METRICS_WINDOW_SECONDS):
  counting every retained row costs a scan of the whole history. The history's size is
  `scheduler_executions_retained_estimate`, PostgreSQL's estimate as of its last ANALYZE;
- the duration and lateness histograms cover a trailing window (SCHEDULER_METRICS_WINDOW_SECONDS) of
  executions finished / fired, so read them as they are (quantiles over the window), not with rate().
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.selectors.summary import summary_cached

MB = 1024 * 1024


def _by_label(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, data: dict[str, Any]) -> HistogramMetricFamily:
    buckets = [(repr(float(le)), count) for le, count in data["buckets"]]
    buckets.append(("+Inf", data["count"]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=data["sum"])


def _node_families(nodes: list[dict[str, Any]]) -> Iterator[Metric]:
    specs = [
        ("scheduler_node_cpu_capacity_cores", "CPU cores the node offers", "cpu_capacity", 1),
        (
            "scheduler_node_cpu_allocated_cores",
            "CPU cores reserved by active allocations",
            "cpu_allocated",
            1,
        ),
        ("scheduler_node_cpu_used_cores", "CPU cores in use at the last heartbeat", "cpu_used", 1),
        ("scheduler_node_memory_capacity_bytes", "Memory the node offers", "memory_mb_capacity", MB),
        (
            "scheduler_node_memory_allocated_bytes",
            "Memory reserved by active allocations",
            "memory_mb_allocated",
            MB,
        ),
        ("scheduler_node_memory_used_bytes", "Memory in use at the last heartbeat", "memory_mb_used", MB),
        ("scheduler_node_running_executions", "Executions running on the node", "running", 1),
    ]
    for name, doc, key, scale in specs:
        family = GaugeMetricFamily(name, doc, labels=["node", "status"])
        for node in nodes:
            family.add_metric([node["name"], node["status"]], node[key] * scale)
        yield family


def _desired_workers_family(signals: list[dict[str, Any]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "scheduler_desired_workers",
        "Workers each node label set needs for its pending and running work (the autoscaling signal)",
        labels=["labels"],
    )
    for signal in signals:
        family.add_metric([signal["labels"]], signal["desired"])
    return family


class SchedulerCollector(Collector):
    """Yields every scheduler metric family from one summary (database + broker, cached briefly)."""

    def collect(self) -> Iterator[Metric]:
        s = summary_cached()
        window = s["window_seconds"]
        yield _by_label("scheduler_jobs", "Jobs by status", "status", s["jobs_by_status"])
        yield _by_label(
            "scheduler_executions",
            f"Executions by status: active ones now, the others finished in the last {window}s",
            "status",
            s["executions_by_status"],
        )
        yield GaugeMetricFamily(
            "scheduler_executions_retained_estimate",
            "About how many executions are retained (PostgreSQL's estimate as of its last ANALYZE)",
            value=s.get("executions_retained_estimate", 0),  # absent if cached by an older release
        )
        yield GaugeMetricFamily(
            "scheduler_executions_pending", "Executions waiting for a node", value=s["executions_pending"]
        )
        yield GaugeMetricFamily(
            "scheduler_pending_oldest_seconds",
            "Age of the oldest pending execution (0 when none)",
            value=s["oldest_pending_seconds"] or 0,
        )
        yield _histogram(
            "scheduler_execution_duration_seconds",
            f"Run time of executions finished in the last {window}s",
            s["duration_seconds"],
        )
        yield _histogram(
            "scheduler_firing_lateness_seconds",
            f"Delay from slot time to firing, for scheduled executions fired in the last {window}s",
            s["lateness_seconds"],
        )
        if s["queues"] is not None:
            yield _by_label(
                "scheduler_queue_depth", "Messages waiting in a broker queue", "queue", s["queues"]
            )
        yield GaugeMetricFamily(
            "scheduler_broker_up", "1 if the broker answered", value=int(s["queues"] is not None)
        )
        yield _by_label("scheduler_nodes", "Nodes by status", "status", s["nodes_by_status"])
        yield from _node_families(s["nodes"])
        yield _by_label(
            "scheduler_dead_letters", "Dead letters by status", "status", s["dead_letters_by_status"]
        )
        yield GaugeMetricFamily(
            "scheduler_alerts_firing", "Alerts currently firing", value=s["alerts_firing"]
        )
        yield _desired_workers_family(s.get("desired_workers", []))  # absent if cached by an older release
        yield GaugeMetricFamily(
            "scheduler_beat_leader_up",
            "1 if a beat leader renewed its lease recently",
            value=int(bool(s["beat"].get("healthy"))),
        )


def metrics_exposition() -> bytes:
    """The Prometheus text format of every scheduler metric family."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector())
    return generate_latest(registry)
