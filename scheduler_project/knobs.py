"""The SCHEDULER_* settings, parsed and range-checked in one place when a process starts.

`Knobs` reads each variable from the environment with its type, default and range; every value that is
wrong becomes one line naming the variable, what it holds and what it expects, and `check()` stops the
process with those lines (SystemExit: no traceback), before any server or worker starts. Used by
scheduler_project/settings.py and by the `make up` helpers (devservers, supervise), which run without
Django; it imports nothing but the standard library.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Collection, Mapping
from typing import TypeVar

N = TypeVar("N", int, float)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Knobs:
    """Typed reads of environment variables; problems are collected, then reported at once by check()."""

    def __init__(self, environ: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.errors: list[builtins.str] = []

    def _raw(self, name: builtins.str) -> builtins.str | None:
        value = self.environ.get(name)
        return None if value is None else value.strip()

    def _number(
        self, name: builtins.str, kind: type[N], default: N | None, low: N | None, high: N | None
    ) -> N | None:
        raw = self._raw(name)
        if raw is None or raw == "":
            return default
        what = "a whole number" if kind is int else "a number"
        span = (
            f" from {low} to {high}"
            if low is not None and high is not None
            else f" of at least {low}"
            if low is not None
            else f" of at most {high}"
            if high is not None
            else ""
        )
        try:
            value = kind(raw)
        except ValueError:
            self.errors.append(f"{name}={raw!r} is not {what}; expected {what}{span}")
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            self.errors.append(f"{name}={raw!r} is out of range; expected {what}{span}")
            return default
        return value

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        low: builtins.int | None = None,
        high: builtins.int | None = None,
    ) -> builtins.int:
        value = self._number(name, int, default, low, high)
        return default if value is None else value

    def float(
        self,
        name: builtins.str,
        default: builtins.float,
        *,
        low: builtins.float | None = None,
        high: builtins.float | None = None,
    ) -> float:
        value = self._number(name, float, default, low, high)
        return default if value is None else value

    def optional_int(
        self, name: builtins.str, *, low: builtins.int | None = None, high: builtins.int | None = None
    ) -> builtins.int | None:
        """Unset (or empty) means None: e.g. "what the host has"."""
        return self._number(name, int, None, low, high)

    def optional_float(
        self, name: builtins.str, *, low: builtins.float | None = None, high: builtins.float | None = None
    ) -> builtins.float | None:
        return self._number(name, float, None, low, high)

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        self.errors.append(
            f"{name}={raw!r} is not a yes/no value; expected 1/0, true/false, yes/no or on/off"
        )
        return default

    def str(
        self, name: builtins.str, default: builtins.str, *, choices: Collection[builtins.str] | None = None
    ) -> builtins.str:
        raw = self.environ.get(name)
        if raw is None:
            return default
        if choices is not None and raw not in choices:
            self.errors.append(f"{name}={raw!r} is not one of {', '.join(sorted(choices))}")
            return default
        return raw

    def port(self, name: builtins.str, default: builtins.int) -> builtins.int:
        value = self.int(name, default, low=1, high=65535)
        return default if value is None else value

    def check(self, *, where: builtins.str = "configuration") -> None:
        """Stop the process with one line per wrong value (nothing happens when all are right)."""
        if self.errors:
            raise SystemExit("\n".join(f"{where}: {line}" for line in self.errors))
