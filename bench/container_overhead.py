"""What running a job in a container costs next to running it as a process: the executor alone, side by side.

    .venv/bin/python bench/container_overhead.py [--runs 20]

Runs `true` through the shell executor and through the container executor (cpu 0.5, 64 MB, network none,
on a private dockerd this script starts and stops, with the busybox test image), alternating, and prints
the per-run wall time of each and their ratio. DOCKER_HOST set: that engine is used instead (it must hold
an image named by --image).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _setup  # noqa: E402,F401 - environment for Django (no database is used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--image", default="scheduler-test/busybox:1")
    args = parser.parse_args()

    import django

    django.setup()
    from jobs.executors import Resources, container, shell
    from tests.docker_engine import engine_start, engine_stop

    engine = None
    if not os.environ.get("DOCKER_HOST"):
        engine = engine_start(Path(tempfile.mkdtemp(prefix="bench-docker-")))
        os.environ["DOCKER_HOST"] = engine.host
    try:
        limits = Resources(cpu=0.5, memory_mb=64)
        cases = {
            "shell: true": lambda: shell.run({"command": ["true"]}, timeout=30),
            "container: true": lambda: container.run(
                {"image": args.image, "command": ["true"], "pull": "never"}, timeout=30, resources=limits
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for name, case in cases.items():  # one warm-up each
            assert case().status == "succeeded", name
        for _ in range(args.runs):
            for name, case in cases.items():
                started = time.perf_counter()
                outcome = case()
                times[name].append(time.perf_counter() - started)
                assert outcome.status == "succeeded", (name, outcome)
        base = statistics.median(times["shell: true"])
        print(f"{'case':<18} {'runs':>5} {'p50 ms':>8} {'mean ms':>8} {'max ms':>8} {'x shell':>8}")
        for name, values in times.items():
            p50 = statistics.median(values)
            print(f"{name:<18} {len(values):>5} {p50 * 1000:>8.1f} {statistics.mean(values) * 1000:>8.1f} "
                  f"{max(values) * 1000:>8.1f} {p50 / base:>8.1f}")  # fmt: skip
    finally:
        if engine is not None:
            engine_stop(engine)


if __name__ == "__main__":
    main()
