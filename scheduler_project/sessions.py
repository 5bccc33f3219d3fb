"""Session engine (SESSION_ENGINE): Django's database sessions, except when the database is away.

Django's store turns any database error while saving an existing session into UpdateError, which
SessionMiddleware reports as "the session was deleted" (SessionInterrupted, a 400). A connection-level
error stays itself here, so it answers 503 + Retry-After like any other (scheduler_project/dbguard.py).
"""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.contrib.sessions.backends.base import UpdateError

from scheduler_project.errors import DATABASE_UNAVAILABLE


class SessionStore(db.SessionStore):
    """Sessions in the database; a save cut off by the database going away raises that error."""

    def save(self, must_create: bool = False) -> None:
        try:
            super().save(must_create)
        except UpdateError as exc:
            cause = exc.__context__  # Django raises UpdateError inside `except DatabaseError`
            if isinstance(cause, DATABASE_UNAVAILABLE):
                raise cause from None
            raise
