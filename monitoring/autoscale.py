"""The autoscaling hook behind `manage.py autoscale`: follow the desired-workers signal, run a command.

Hysteresis: a higher count is applied at once (work is waiting); a lower one only once the signal stayed
below the current count for `cooldown` seconds, and then to the highest value it took meanwhile, so a
backlog that drains and refills does not stop and start workers each time. A command that fails (non-zero
exit, not found, over its timeout) leaves the current count as it was; it is tried again when the target
changes, or after `cooldown` seconds for the same target.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitoring.selectors.autoscale import DesiredWorkers, desired_workers

logger = logging.getLogger(__name__)
COMMAND_OUTPUT_TAIL = 500  # characters of a failed command's output in the log


@dataclass
class Hysteresis:
    """Decides when a new desired count is acted on: up at once, down after `cooldown` seconds."""

    cooldown: float
    current: int | None = None  # the count last applied (None: nothing applied yet)
    _low_since: float | None = None
    _low_peak: int = 0

    def decide(self, desired: int, now: float) -> int | None:
        """The count to scale to now, or None to keep the current one."""
        if self.current is None or desired >= self.current:
            self._low_since = None
            return None if desired == self.current else desired
        if self._low_since is None:
            self._low_since, self._low_peak = now, desired
        else:
            self._low_peak = max(self._low_peak, desired)
        return self._low_peak if now - self._low_since >= self.cooldown else None

    def applied(self, count: int) -> None:
        """`count` is now what runs."""
        self.current, self._low_since = count, None

    def scale_down_in(self, now: float) -> float | None:
        """Seconds until a pending scale-down is due (None: none pending)."""
        return None if self._low_since is None else max(0.0, self.cooldown - (now - self._low_since))


def command_argv(template: str, count: int) -> list[str]:
    """The command as argv with {n} replaced in each word (split first: a count never meets a shell)."""
    return [word.replace("{n}", str(count)) for word in shlex.split(template)]


@dataclass
class Autoscaler:
    """One label set's loop body: read the signal, clamp it, decide, run the command."""

    template: str
    minimum: int
    maximum: int
    selector: Mapping[str, Any]
    cooldown: float
    timeout: float = 600.0
    log: Callable[[str], None] = logger.info
    clock: Callable[[], float] = time.monotonic
    hysteresis: Hysteresis = field(init=False)
    _failed: tuple[int, float] | None = None
    _last_seen: int | None = None

    def __post_init__(self) -> None:
        self.hysteresis = Hysteresis(cooldown=self.cooldown)

    def signal(self) -> DesiredWorkers:
        return desired_workers(self.selector)[0]

    def clamp(self, desired: int) -> int:
        return max(self.minimum, min(self.maximum, desired))

    def tick(self) -> bool | None:
        """One poll: True if the command ran and succeeded, False if it failed, None if nothing ran."""
        signal = self.signal()
        now = self.clock()
        wanted = self.clamp(signal.desired)
        if wanted != self._last_seen:
            self._last_seen = wanted
            self.log(_describe(signal, wanted, self.hysteresis.current))
        target = self.hysteresis.decide(wanted, now)
        if target is None:
            return None
        if self._failed and self._failed[0] == target and now - self._failed[1] < self.cooldown:
            return None  # the same target failed recently: wait for a change or the cooldown
        return self._apply(target, now)

    def _apply(self, target: int, now: float) -> bool:
        argv = command_argv(self.template, target)
        self.log(f"scaling {_count(self.hysteresis.current)} -> {target}: {shlex.join(argv)}")
        problem = _run(argv, self.timeout)
        if problem is None:
            self.hysteresis.applied(target)
            self._failed = None
            self.log(f"scaled to {target}")
            return True
        self._failed = (target, now)
        self.log(f"command failed ({problem}); {_count(self.hysteresis.current)} kept, tried again later")
        return False


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _describe(signal: DesiredWorkers, wanted: int, current: int | None) -> str:
    worker = (
        f"worker {signal.worker_cpu} cpu, {signal.worker_memory_mb} MB"
        if signal.worker_cpu is not None
        else "no node registered yet"
    )
    large = f", {signal.too_large} larger than a worker" if signal.too_large else ""
    return (
        f"labels {signal.labels or '(none)'}: desired {signal.desired} (clamped {wanted}, current "
        f"{_count(current)}): {signal.executions} executions ({signal.pending} pending{large}), "
        f"{signal.cpu} cpu, {signal.memory_mb} MB; {worker}; busy nodes {signal.busy}"
    )


def _run(argv: list[str], timeout: float) -> str | None:
    """Run argv (no shell); None if it exited 0, else what went wrong."""
    try:
        done = subprocess.run(  # noqa: S603 - the operator's own command, split by shlex, no shell
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode == 0:
        return None
    output = (done.stderr or done.stdout or "").strip()[-COMMAND_OUTPUT_TAIL:]
    return f"exit {done.returncode}" + (f": {output}" if output else "")
