"""Signals the nodes app sends; other apps connect to them (nodes imports nothing of theirs)."""

from django.dispatch import Signal

# Sent after commit when capacity may fit waiting work now: a node registered, came back online or was
# undrained. The jobs core connects its placement pass to it (jobs.apps).
capacity_available = Signal()
