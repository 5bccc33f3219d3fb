"""The `python` executor: runs a handler registered in code, in the worker process, interruptible.

The stop at a timeout or a cancel is an exception raised asynchronously in the handler's thread (SIGALRM
sent by the watcher thread). It lands only in handler code: one that arrives while the handler's thread is
inside a database query or a call into the worker (progress, log) waits until that call returns, and once
the handler has returned or raised it no longer lands at all. A query in flight and the worker's own
bookkeeping (recording the outcome, releasing the capacity) are never cut in the middle.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from psycopg.pq import TransactionStatus

from .base import LocalControl, Outcome, OutputTail, RunControl, clamp_progress, payload_envelope_errors

logger = logging.getLogger(__name__)
PAYLOAD_KEYS = {"handler", "kwargs"}
POLL_SECONDS = 1.0
PROGRESS_SECONDS = 1.0  # a handler's progress reaches its control at most this often
Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}
DEMO_HANDLERS: set[str] = set()  # names usable only with SCHEDULER_DEMO_HANDLERS


def handler(name: str | None = None, *, demo: bool = False) -> Callable[[Handler], Handler]:
    """Register a function as a python job handler: `fn(ctx, **kwargs)`; its return value is the result."""

    def register(fn: Handler) -> Handler:
        key = name or fn.__name__
        if key in HANDLERS and HANDLERS[key] is not fn:
            raise ValueError(f"python job handler {key!r} is already registered")
        HANDLERS[key] = fn
        if demo:
            DEMO_HANDLERS.add(key)
        return fn

    return register


def handlers_available() -> dict[str, Handler]:
    """The handlers jobs may name on this installation (demo ones only with SCHEDULER_DEMO_HANDLERS)."""
    if settings.SCHEDULER_DEMO_HANDLERS:
        return dict(HANDLERS)
    return {key: fn for key, fn in HANDLERS.items() if key not in DEMO_HANDLERS}


def _unavailable(name: object, available: dict[str, Handler]) -> str:
    known = ", ".join(sorted(available)) or "none"
    if name in DEMO_HANDLERS:
        return (
            f"{name!r} is a demo handler, and demo handlers are off on this installation"
            f" (SCHEDULER_DEMO_HANDLERS); registered: {known}"
        )
    return f"{name!r} is not a registered handler (registered: {known})"


class _Stop(BaseException):
    """Raised in the handler's thread to interrupt it (BaseException: `except Exception` won't eat it)."""


class _Guard:
    """Where the stop may land in the handler's thread: in handler code only (see the module docstring).

    A context manager around each protected call; a stop that arrives inside one is raised when the
    outermost one returns. Only that thread changes its state (signal handlers run there too)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.live = True  # the handler runs (or is about to): a stop may land
        self.depth = 1  # protected calls in progress; the first is the worker's setup, left by _call
        self.pending = False  # a stop arrived inside one
        self.stopped = False  # a stop was raised in the handler

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """The SIGALRM handler: stop the handler now, or when its protected call returns."""
        if not self.live:
            return
        if self.depth:
            self.pending = True
            return
        self.stopped = True
        raise _Stop

    def __enter__(self) -> None:
        if threading.get_ident() == self.thread:
            self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        if threading.get_ident() != self.thread:
            return
        self.depth -= 1
        if self.pending and not self.depth and self.live:
            self.pending = False
            self.stopped = True
            raise _Stop

    def again(self) -> None:
        """A safe point of handler code: a handler that swallowed its stop is stopped again."""
        if self.stopped and self.live and threading.get_ident() == self.thread:
            raise _Stop


class _Progress:
    """A handler's progress reports, passed to the control at most once per PROGRESS_SECONDS (a held
    last one by the watcher's next check, or when the handler ends)."""

    def __init__(self, control: RunControl) -> None:
        self.control = control
        self.lock = threading.Lock()
        self.held: float | None = None
        self.next_at = 0.0

    def report(self, value: float) -> None:
        with self.lock:
            self.held = value
            if time.monotonic() >= self.next_at:
                self._forward()

    def flush(self, *, due_only: bool = False) -> None:
        with self.lock:
            if self.held is not None and (not due_only or time.monotonic() >= self.next_at):
                self._forward()

    def _forward(self) -> None:
        value, self.held = self.held, None
        self.next_at = time.monotonic() + PROGRESS_SECONDS
        if value is not None:
            self.control.progress_update(value)


@dataclass
class HandlerContext:
    """What a handler gets besides its kwargs: progress and log reporting, cancellation."""

    control: RunControl
    tail: OutputTail
    execution_id: int | None = None
    guard: _Guard = field(default_factory=_Guard, repr=False)
    reporter: _Progress = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reporter = _Progress(self.control)

    def progress(self, value: float) -> None:
        with self.guard:
            self.reporter.report(clamp_progress(value))
        self.guard.again()

    def log(self, text: str) -> None:
        with self.guard:
            self.tail.write(f"{text}\n".encode())
        self.guard.again()


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
    available = handlers_available()
    if not isinstance(name, str) or name not in available:
        errors["payload.handler"] = _unavailable(name, available)
    else:
        try:
            inspect.signature(available[name]).bind(None, **kwargs)
        except TypeError as exc:
            errors["payload.kwargs"] = f"do not fit handler {name!r}: {exc}"
    return errors


class _Watch:
    """One run being watched: its deadline, its cancellation, its output tail and its held progress."""

    def __init__(self, ctx: HandlerContext, timeout: float, can_interrupt: bool) -> None:
        self.control, self.tail, self.reporter = ctx.control, ctx.tail, ctx.reporter
        self.timeout, self.can_interrupt = timeout, can_interrupt
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
        """One poll (deadline, cancellation, output, progress); True when the run must stop (and was told)."""
        self.waited += POLL_SECONDS
        self.reporter.flush(due_only=True)
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


@contextlib.contextmanager
def _queries_guarded(guard: _Guard) -> Iterator[None]:
    """Every query on this thread's connections is a protected call while the handler runs."""

    def guarded(execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any) -> Any:
        with guard:
            return execute(sql, params, many, context)

    with contextlib.ExitStack() as stack:
        for conn in connections.all():
            stack.enter_context(conn.execute_wrapper(guarded))
        yield


def _connections_settle(*, stopped: bool) -> None:
    """Close this thread's connections that the handler may have left unfit for the worker's next query:
    mid-transaction, out of autocommit, or any after a stop (which may have cut a connect or a commit)."""
    for conn in connections.all(initialized_only=True):
        raw = conn.connection
        if raw is None or conn.in_atomic_block:
            continue
        info = getattr(raw, "info", None)
        unfit = info is not None and (info.transaction_status != TransactionStatus.IDLE or not raw.autocommit)
        if stopped or unfit:
            with contextlib.suppress(DatabaseError):
                conn.close()  # the worker's next query opens a fresh one


def _call(fn: Handler, ctx: HandlerContext, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Run the handler: ("ok", its value), ("failed", its exception) or ("stopped", None)."""
    guard = ctx.guard
    try:
        with _queries_guarded(guard):
            try:
                guard.__exit__()  # the setup is done: a stop that came meanwhile lands here
                return "ok", fn(ctx, **kwargs)
            finally:
                guard.live = False  # from here on the worker's code runs: no stop lands any more
    except _Stop:
        guard.live = False  # (in case it landed before the line above)
        return "stopped", None
    except Exception as exc:  # noqa: BLE001 - a handler's failure is the run's outcome, not the worker's
        guard.live = False
        return "failed", exc


def run(
    payload: dict[str, Any],
    *,
    timeout: float,
    control: RunControl | None = None,
    execution_id: int | None = None,
    **_: Any,
) -> Outcome:
    """Call the handler with its kwargs; interrupt it at the timeout or when the run is cancelled."""
    control = control or LocalControl()
    available = handlers_available()
    name = payload.get("handler")
    if not isinstance(name, str) or name not in available:  # the installation changed since submission
        return Outcome(status="failed", error=_unavailable(name, available))
    tail = OutputTail(sink=getattr(control, "log_feed", None))
    ctx = HandlerContext(control=control, tail=tail, execution_id=execution_id)
    in_main = threading.current_thread() is threading.main_thread()
    watch = _Watch(ctx, timeout=timeout, can_interrupt=in_main)
    watcher = _the_watcher()
    previous = signal.signal(signal.SIGALRM, ctx.guard.interrupt) if in_main else None
    watcher.add(watch)
    try:
        how, value = _call(available[name], ctx, payload.get("kwargs", {}))
    finally:
        watch.disarm()
        if in_main:
            signal.signal(signal.SIGALRM, previous)
    watcher.remove(watch)
    _connections_settle(stopped=ctx.guard.stopped)
    ctx.reporter.flush()
    return _outcome(how, value, watch.reason, timeout, tail)


def _outcome(how: str, value: Any, reason: str | None, timeout: float, tail: OutputTail) -> Outcome:
    outcome = Outcome(status="succeeded")
    if how == "ok":
        outcome.result = _jsonable(value)
    elif how == "failed":
        outcome.status, outcome.error = "failed", f"{type(value).__name__}: {value}"[:4000]
        tail.write("".join(traceback.format_exception(value)).encode())
    if reason == "timed_out":
        outcome.status, outcome.error = "timed_out", f"timed out after {timeout:g}s; handler interrupted"
    elif reason:
        outcome.status, outcome.error = "cancelled", f"{reason}; handler interrupted"
    elif how == "stopped":  # a SIGALRM the watcher did not send
        outcome.status, outcome.error = "failed", "handler interrupted by SIGALRM"
    outcome.output, outcome.output_truncated = tail.text(), tail.truncated
    return outcome


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:4000]
    return value
