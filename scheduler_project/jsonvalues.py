"""JSON values PostgreSQL can store: bounded depth, no NUL characters, no lone surrogates.

Shared by the API's JSON parser (scheduler_project.api.base) and the jobs input checks (jobs.validation),
so a body the API accepts is one the admin and manage.py accept too.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64


def json_storable_problem(value: Any) -> str | None:
    """Why a JSON value cannot be stored (too deep, NUL or lone surrogates), or None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and ("\x00" in item or any("\ud800" <= ch <= "\udfff" for ch in item)):
            # PostgreSQL stores neither in text or jsonb.
            return "JSON strings must not contain NUL characters or lone surrogates"
    return None
