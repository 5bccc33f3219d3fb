"""Placements per second with 1, 10 and 100 registered nodes: the cost of a placement must not grow with them.

For each cluster size N (online nodes with room for everything), against the benchmark database:
  one:    M placements, one demand per transaction (`nodes.placement.capacity_reserve`: one conditional
          UPDATE of the chosen node's counters and the allocation row, then COMMIT), as "run now" places;
  pass:   the pending pass (`jobs.services.firing.pending_place`, 500 per transaction): M pending
          executions locked, placed in memory, booked per node, queued;
  4 threads: `one` from 4 threads at once (own connections): placements on different nodes do not wait
          for each other; on 1 node they queue on its row.
Allocations are released between measurements. Each row is the median of ROUNDS runs.

Run: .venv/bin/python bench/placement.py [--count 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

from _setup import machine, setup


def _nodes(n: int) -> None:
    from nodes.models import Node, ResourceAllocation

    ResourceAllocation.objects.all().delete()
    Node.objects.all().delete()
    Node.objects.bulk_create(
        Node(
            name=f"bench{i}@placement", hostname="placement", cpu_capacity=Decimal("9999"),
            memory_mb_capacity=10**9, labels={"zone": f"z{i % 3}"},
        )
        for i in range(n)
    )  # fmt: skip


def _executions(count: int) -> list[int]:
    from django.contrib.auth import get_user_model

    from jobs.models import Execution, Job

    owner = get_user_model().objects.get_or_create(username="bench")[0]
    Job.objects.filter(owner=owner).delete()
    job = Job.objects.create(owner=owner, name="placement", kind="python", payload={"handler": "echo"})
    now = datetime.now(UTC)
    # The bench seeds pending rows directly; the product creates them through the state module.
    rows = Execution.objects.bulk_create(
        Execution(job=job, scheduled_for=now, attempt=i + 1) for i in range(count)
    )
    return [row.pk for row in rows]


def _release_all() -> None:
    from nodes.models import Node, ResourceAllocation

    ResourceAllocation.objects.all().delete()
    Node.objects.update(cpu_allocated=0, memory_mb_allocated=0)


def one_by_one(ids: list[int]) -> float:
    from django.db import transaction

    from nodes.placement import Demand, Reservation, capacity_reserve

    started = time.perf_counter()
    for pk in ids:
        with transaction.atomic():
            [placed] = capacity_reserve(
                demands=[Demand(holder_id=pk, cpu=Decimal("0.1"), memory_mb=64, selector={})]
            )
        assert isinstance(placed, Reservation)
    return len(ids) / (time.perf_counter() - started)


def threaded(ids: list[int], threads: int = 4) -> float:
    from django.db import connection

    errors: list[BaseException] = []

    def work(chunk: list[int]) -> None:
        try:
            one_by_one(chunk)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=work, args=(ids[i::threads],)) for i in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    return len(ids) / (time.perf_counter() - started)


def pending_pass(count: int) -> float:
    from jobs.models import Execution
    from jobs.services import firing

    started = time.perf_counter()
    placed = 0
    while placed < count:
        done = firing.pending_place(limit=500)
        if not done:
            break
        placed += done
    rate = placed / (time.perf_counter() - started)
    assert Execution.objects.filter(status=Execution.Status.QUEUED).count() >= count
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,10,100")
    args = parser.parse_args()
    setup()
    from jobs.models import Execution, Job

    sizes = [int(s) for s in args.sizes.split(",")]
    table: dict[int, dict[str, float]] = {}
    for size in sizes:
        _nodes(size)
        rates: dict[str, list[float]] = {"one": [], "pass": [], "threads": []}
        for _ in range(args.rounds):
            ids = _executions(args.count)
            rates["one"].append(one_by_one(ids))
            _release_all()
            rates["threads"].append(threaded(ids))
            _release_all()
            rates["pass"].append(pending_pass(args.count))
            _release_all()
        table[size] = {key: statistics.median(values) for key, values in rates.items()}
    Job.objects.filter(owner__username="bench").delete()
    assert not Execution.objects.filter(job__owner__username="bench").exists()
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{args.count} placements per measurement, median of {args.rounds}; PostgreSQL on 127.0.0.1")
    header = (
        f"{'nodes':>6} {'one per txn /s':>15} {'4 threads /s':>13} {'pending pass /s':>16} "
        f"{'one vs 1 node':>14} {'pass vs 1 node':>15}"
    )
    print(header)
    print("-" * len(header))
    base, base_pass = table[sizes[0]]["one"], table[sizes[0]]["pass"]
    for size in sizes:
        row = table[size]
        print(
            f"{size:>6} {row['one']:>15.0f} {row['threads']:>13.0f} {row['pass']:>16.0f} "
            f"{row['one'] / base:>14.2f} {row['pass'] / base_pass:>15.2f}"
        )


if __name__ == "__main__":
    main()
