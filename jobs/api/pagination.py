"""Pagination of the history's lists (executions, dead letters): ?limit=/?offset= pages, a cheap count.

DRF's LimitOffsetPagination counts the whole filtered set for every page: at a million retained executions
that COUNT(*) is most of the request. Here the page is read first (one row more than asked, to know whether
more follow); a page that ends the list gives the exact total for free. Otherwise the count stops
COUNT_AHEAD rows past the offset and gets COUNT_BUDGET_MS of database time (a rare filter, `?status=dead`
of one user, may have to read a long history to find those rows): past either, `count` is only a lower
bound and `count_exact` is false. `next` is right either way: null only on the last page.
"""

from __future__ import annotations

from typing import Any

from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet
from psycopg.errors import QueryCanceled
from rest_framework.request import Request
from rest_framework.response import Response

from scheduler_project.api.base import Pagination

COUNT_AHEAD = 1000  # > max_limit (500), so a capped count always leaves a next page
COUNT_BUDGET_MS = 50  # the count's statement_timeout: a page costs at most this much more than its rows


class CappedCountPagination(Pagination):
    """Like Pagination, but `count` is exact only when it is cheap to know (count_exact says which)."""

    count_exact = True

    def paginate_queryset(self, queryset: QuerySet, request: Request, view: Any = None) -> list[Any] | None:
        self.request = request
        self.limit = self.get_limit(request)
        if self.limit is None:
            return None
        offset = self.offset = self.get_offset(request)
        rows = list(queryset[offset : offset + self.limit + 1])
        if len(rows) <= self.limit and (rows or offset == 0):
            self.count, self.count_exact = offset + len(rows), True  # the last page: the total is known
        else:
            self.count, self.count_exact = _capped_count(queryset, offset, offset + len(rows))
        return rows[: self.limit]

    def get_paginated_response(self, data: Any) -> Response:
        response = super().get_paginated_response(data)
        response.data["count_exact"] = self.count_exact
        return response

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        paginated = super().get_paginated_response_schema(schema)
        paginated["properties"]["count"]["description"] = (
            "the total when count_exact; otherwise a lower bound (there are more rows)"
        )
        paginated["properties"]["count_exact"] = {"type": "boolean", "example": True}
        return paginated


def _capped_count(queryset: QuerySet, offset: int, known: int) -> tuple[int, bool]:
    """(count, exact): at most offset + COUNT_AHEAD + 1 rows counted, in whatever order is cheapest,
    within COUNT_BUDGET_MS; past the budget, the `known` rows (offset + the page read)."""
    ahead = offset + COUNT_AHEAD
    try:
        seen = _count_within_budget(queryset.order_by()[: ahead + 1])
    except OperationalError as exc:
        if not isinstance(exc.__cause__, QueryCanceled):
            raise
        return known, False  # the budget ran out; the savepoint undid the timeout
    return (seen, True) if seen <= ahead else (ahead, False)


def _count_within_budget(queryset: QuerySet) -> int:
    """queryset.count() under a statement_timeout of COUNT_BUDGET_MS (SET LOCAL: for this transaction).

    Outside a transaction the count gets one of its own, which ends the setting. Inside one (a test, an
    atomic request) it runs in a savepoint: a timeout rolls the setting back with it; a success sets the
    old value back, since a released savepoint would keep it for the rest of the enclosing transaction.
    """
    using = queryset.db
    nested = connections[using].in_atomic_block
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        budget = f"{COUNT_BUDGET_MS}ms"
        cursor.execute(
            "SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)", [budget]
        )
        (previous, _) = cursor.fetchone()
        count = queryset.count()
        if nested:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
    return count
