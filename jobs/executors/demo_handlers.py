"""Demo python job handlers: sleep, fail, progress, echo and crash (a poison job for fault tests).

Jobs may name them only with SCHEDULER_DEMO_HANDLERS (on in development and test, off in production):
`crash` kills the worker process that runs it.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from .python import HandlerContext, handler


@handler("sleep", demo=True)
def sleep(ctx: HandlerContext, seconds: float = 1.0) -> dict[str, float]:
    """Sleep, then report how long."""
    time.sleep(float(seconds))
    return {"slept": float(seconds)}


@handler("fail", demo=True)
def fail(ctx: HandlerContext, message: str = "failed on purpose") -> None:
    """Always fail with `message`."""
    raise RuntimeError(message)


@handler("progress", demo=True)
def progress(ctx: HandlerContext, steps: int = 5, delay: float = 0.2) -> dict[str, int]:
    """Report progress in `steps` steps, `delay` seconds apart."""
    for step in range(1, int(steps) + 1):
        time.sleep(float(delay))
        ctx.progress(step * 100 / int(steps))
        ctx.log(f"step {step}/{steps}")
    return {"steps": int(steps)}


@handler("echo", demo=True)
def echo(ctx: HandlerContext, **kwargs: Any) -> dict[str, Any]:
    """Return the kwargs it got, and log them."""
    ctx.log(f"echo {kwargs}")
    return kwargs


@handler("crash", demo=True)
def crash(ctx: HandlerContext) -> None:
    """Kill the worker process running it (SIGKILL to itself): a poison job."""
    os.kill(os.getpid(), signal.SIGKILL)
