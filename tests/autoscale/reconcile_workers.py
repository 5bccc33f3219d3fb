"""The --command of the autoscale test: make `N` local celery workers run (python reconcile_workers.py N DIR).

It starts workers with the start_worker fixture's argv and the caller's environment, records each one in
DIR/workers.json (what should run) and DIR/started.json (everything ever started, for cleanup), and
SIGTERMs the newest extra ones (a warm shutdown: they finish what they run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _write(path: Path, value: object) -> None:
    """Replace the file at once: the test reads it while this runs (never half written)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(value))
    os.replace(part, path)


def main() -> None:
    target, folder = int(sys.argv[1]), Path(sys.argv[2])
    state, started = folder / "workers.json", folder / "started.json"
    workers = [w for w in json.loads(state.read_text()) if _alive(w["pid"])] if state.exists() else []
    ever = json.loads(started.read_text()) if started.exists() else []
    while len(workers) > target:
        extra = workers.pop()
        os.kill(extra["pid"], signal.SIGTERM)
    used = {w["name"] for w in workers}
    index = 0
    while len(workers) < target:
        index += 1
        name = f"auto{index}@testhost"
        if name in used:
            continue
        argv = [
            sys.executable, "-m", "celery", "-A", "scheduler_project", "worker",
            "-n", name, "-c", "2", "--loglevel", "INFO", "-E", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with open(folder / f"worker-auto{index}-{len(ever)}.log", "wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own argv
                argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        workers.append({"name": name, "pid": proc.pid})
        ever.append(proc.pid)
        used.add(name)
    _write(state, workers)
    _write(started, ever)


if __name__ == "__main__":
    main()
