"""The `python` executor: runs a handler registered in code, in the worker process, interruptible."""

from __future__ import annotations

import inspect
import json
import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections

from .base import LocalControl, Outcome, OutputTail, RunControl, clamp_progress

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
    if not isinstance(payload, dict):
        return {"payload": "must be an object with a 'handler' name"}
    errors: dict[str, str] = {}
    unknown = set(payload) - PAYLOAD_KEYS
    if unknown:
        errors["payload"] = f"unknown keys: {', '.join(sorted(unknown))}"
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


class _Watcher(threading.Thread):
    """Checks the deadline and cancellation each second; interrupts the main thread with SIGALRM."""

    def __init__(self, control: RunControl, tail: OutputTail, timeout: float, can_interrupt: bool) -> None:
        super().__init__(daemon=True)
        self.control, self.tail, self.timeout, self.can_interrupt = control, tail, timeout, can_interrupt
        self.reason: str | None = None
        self.armed = True
        self.lock = threading.Lock()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._watch()
        finally:
            connections.close_all()  # this thread's own database connections

    def _watch(self) -> None:
        stored = 0
        waited = 0.0
        while not self.done.wait(min(POLL_SECONDS, max(self.timeout - waited, 0.01))):
            waited += POLL_SECONDS
            reason = "timed_out" if waited >= self.timeout else self.control.stop_reason()
            if self.tail.version != stored:
                stored = self.tail.version
                self.control.output_update(self.tail.text(), self.tail.truncated)
            if reason:
                with self.lock:
                    if self.armed:
                        self.reason = reason
                        if self.can_interrupt:
                            os.kill(os.getpid(), signal.SIGALRM)
                return

    def disarm(self) -> None:
        with self.lock:
            self.armed = False
        self.done.set()


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
    watcher = _Watcher(control=control, tail=tail, timeout=timeout, can_interrupt=in_main)

    def interrupt(signum: int, frame: object) -> None:
        if watcher.armed:
            raise _Stop

    previous = signal.signal(signal.SIGALRM, interrupt) if in_main else None
    outcome = Outcome(status="succeeded")
    watcher.start()
    try:
        outcome.result = _jsonable(fn(ctx, **payload.get("kwargs", {})))
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - a handler's failure is the run's outcome, not the worker's
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"[:4000]
        tail.write(traceback.format_exc().encode())
    finally:
        watcher.disarm()
        if in_main:
            signal.signal(signal.SIGALRM, previous)
    watcher.join(timeout=5)
    if watcher.reason == "timed_out":
        outcome.status, outcome.error = "timed_out", f"timed out after {timeout:g}s; handler interrupted"
    elif watcher.reason:
        outcome.status, outcome.error = "cancelled", f"{watcher.reason}; handler interrupted"
    outcome.output, outcome.output_truncated = tail.text(), tail.truncated
    return outcome


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:4000]
    return value
