"""The `python` executor: runs a handler registered in code, in the worker process, interruptible."""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections

from .base import LocalControl, Outcome, OutputTail, RunControl, clamp_progress, payload_envelope_errors

logger = logging.getLogger(__name__)
PAYLOAD_KEYS = {"handler", "kwargs"}
POLL_SECONDS = 1.0
Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}


def handler(name: str | None = None) -> Callable[[Handler], Handler]:
    """Register a function as a python job handler: `fn(ctx, **kwargs)`; its return value is the result."""

    def register(fn: Handler) -> Handler:
        key = name or fn.__name__
        if key in HANDLERS and HANDLERS[key] is not fn:
            raise ValueError(f"python job handler {key!r} is already registered")
        HANDLERS[key] = fn
        return fn

    return register


@dataclass
class HandlerContext:
    """What a handler gets besides its kwargs: progress and log reporting, cancellation."""

    control: RunControl
    tail: OutputTail
    execution_id: int | None = None

    def progress(self, value: float) -> None:
        self.control.progress_update(clamp_progress(value))

    def log(self, text: str) -> None:
        self.tail.write(f"{text}\n".encode())


def validate(payload: Any) -> dict[str, str]:
    """Errors in a python payload, keyed by field (empty when valid)."""
    errors = payload_envelope_errors(payload, PAYLOAD_KEYS, "a 'handler' name")
    if not isinstance(payload, dict):
        return errors
    name = payload.get("handler")
    kwargs = payload.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        errors["payload.kwargs"] = "must be an object"
        kwargs = {}
    if not isinstance(name, str) or name not in HANDLERS:
        known = ", ".join(sorted(HANDLERS)) or "none"
        errors["payload.handler"] = f"{name!r} is not a registered handler (registered: {known})"
    else:
        try:
            inspect.signature(HANDLERS[name]).bind(None, **kwargs)
        except TypeError as exc:
            errors["payload.kwargs"] = f"do not fit handler {name!r}: {exc}"
    return errors


class _Stop(BaseException):
    """Raised in the handler's thread to interrupt it (BaseException: `except Exception` won't eat it)."""


class _Watch:
    """One run being watched: its deadline, its cancellation and its output tail."""

    def __init__(self, control: RunControl, tail: OutputTail, timeout: float, can_interrupt: bool) -> None:
        self.control, self.tail, self.timeout, self.can_interrupt = control, tail, timeout, can_interrupt
        self.reason: str | None = None
        self.armed = True
        self.lock = threading.Lock()
        self.idle = threading.Event()  # set while no check of this run is in flight
        self.idle.set()
        self.waited = 0.0
        self.stored = 0
        self.next_at = time.monotonic() + self._step()

    def _step(self) -> float:
        return min(POLL_SECONDS, max(self.timeout - self.waited, 0.01))

    def check(self) -> bool:
        """One poll (deadline, cancellation, output); True when the run must stop (and was told so)."""
        self.waited += POLL_SECONDS
        reason = "timed_out" if self.waited >= self.timeout else self.control.stop_reason()
        if self.tail.version != self.stored:
            self.stored = self.tail.version
            self.control.output_update(self.tail.text(), self.tail.truncated)
        if reason:
            with self.lock:
                if self.armed:
                    self.reason = reason
                    if self.can_interrupt:
                        os.kill(os.getpid(), signal.SIGALRM)
            return True
        self.next_at += self._step()
        return False

    def disarm(self) -> None:
        with self.lock:
            self.armed = False


class _Watcher(threading.Thread):
    """One thread per process checks every running run each second; interrupts with SIGALRM."""

    # One long-lived thread, not one per run: starting and joining a thread cost more than a no-op job.

    def __init__(self) -> None:
        super().__init__(daemon=True, name="python-executor-watcher")
        self.pid = os.getpid()
        self.cond = threading.Condition()
        self.watches: list[_Watch] = []
        self.waiting_forever = False

    def add(self, watch: _Watch) -> None:
        with self.cond:
            self.watches.append(watch)
            if self.waiting_forever:  # asleep with nothing to watch: wake it to time this run
                self.cond.notify()

    def remove(self, watch: _Watch) -> None:
        """Stop watching a run; wait (bounded) for a check of it still in flight, e.g. storing output."""
        watch.disarm()
        with self.cond:
            if watch in self.watches:
                self.watches.remove(watch)
        watch.idle.wait(timeout=5)

    def run(self) -> None:
        used_db = False
        while True:
            with self.cond:
                while True:
                    now = time.monotonic()
                    due = [w for w in self.watches if w.next_at <= now]
                    if due or (used_db and not self.watches):
                        break
                    first = min((w.next_at for w in self.watches), default=None)
                    if first is None and used_db:
                        first = now + POLL_SECONDS  # stay on a 1 s tick while runs come and go
                    self.waiting_forever = first is None
                    self.cond.wait(None if first is None else first - now)
                for watch in due:
                    watch.idle.clear()
            if not due:
                connections.close_all()  # this thread's own connections, when no run needs them
                used_db = False
                continue
            used_db = True
            for watch in due:
                self._check(watch)

    def _check(self, watch: _Watch) -> None:
        try:
            over = watch.check()
        except Exception:  # a failed check (database down) must not end the watching of any run
            logger.exception("python executor: checking a run failed; trying again in a second")
            watch.next_at = time.monotonic() + POLL_SECONDS
            over = False
        finally:
            watch.idle.set()
        if over:
            with self.cond:
                if watch in self.watches:
                    self.watches.remove(watch)


_watcher_lock = threading.Lock()
_watcher: _Watcher | None = None


def _the_watcher() -> _Watcher:
    """This process's watcher thread, started on first use (again in a forked child, where it is gone)."""
    global _watcher
    with _watcher_lock:
        if _watcher is None or _watcher.pid != os.getpid() or not _watcher.is_alive():
            _watcher = _Watcher()
            _watcher.start()
        return _watcher


def run(
    payload: dict[str, Any],
    *,
    timeout: float,
    control: RunControl | None = None,
    execution_id: int | None = None,
) -> Outcome:
    """Call the handler with its kwargs; interrupt it at the timeout or when the run is cancelled."""
    control = control or LocalControl()
    fn = HANDLERS[payload["handler"]]
    tail = OutputTail(sink=getattr(control, "log_feed", None))
    ctx = HandlerContext(control=control, tail=tail, execution_id=execution_id)
    in_main = threading.current_thread() is threading.main_thread()
    watch = _Watch(control=control, tail=tail, timeout=timeout, can_interrupt=in_main)
    watcher = _the_watcher()

    def interrupt(signum: int, frame: object) -> None:
        if watch.armed:
            raise _Stop

    previous = signal.signal(signal.SIGALRM, interrupt) if in_main else None
    outcome = Outcome(status="succeeded")
    watcher.add(watch)
    try:
        outcome.result = _jsonable(fn(ctx, **payload.get("kwargs", {})))
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - a handler's failure is the run's outcome, not the worker's
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"[:4000]
        tail.write(traceback.format_exc().encode())
    finally:
        watch.disarm()
        if in_main:
            signal.signal(signal.SIGALRM, previous)
    watcher.remove(watch)
    if watch.reason == "timed_out":
        outcome.status, outcome.error = "timed_out", f"timed out after {timeout:g}s; handler interrupted"
    elif watch.reason:
        outcome.status, outcome.error = "cancelled", f"{watch.reason}; handler interrupted"
    outcome.output, outcome.output_truncated = tail.text(), tail.truncated
    return outcome


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:4000]
    return value
