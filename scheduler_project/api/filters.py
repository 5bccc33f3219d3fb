"""Strict query filters (django-filter) for every app's API: a bad or ambiguous parameter is a 400."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request
from rest_framework.views import APIView

ID_MAX = 2**63 - 1


class IdFilter(django_filters.NumberFilter):
    """A primary key: a whole number within bigint, never a lookup that could reveal other users' rows."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", ID_MAX)
        super().__init__(*args, **kwargs)


class StrictNullBooleanField(forms.NullBooleanField):
    """true/false (or 1/0); anything else is an error, not silently "no filter"."""

    widget = forms.TextInput  # NullBooleanSelect would read anything unknown as "no filter"

    def to_python(self, value: object) -> bool | None:  # type: ignore[override]
        if value in (None, ""):
            return None
        if value in (True, "true", "True", "1"):
            return True
        if value in (False, "false", "False", "0"):
            return False
        raise forms.ValidationError("must be true or false", code="invalid")

    def validate(self, value: object) -> None:
        pass


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictNullBooleanField


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO-8601 instant, compared in UTC (PostgreSQL refuses UTC offsets past 15:59)."""

    def filter(self, qs: QuerySet, value: Any) -> QuerySet:
        return super().filter(qs, value.astimezone(UTC) if value is not None else value)


class StrictFilterSet(django_filters.FilterSet):
    """A filter given empty, or given twice when it takes one value, is a 400 rather than ignored."""

    def is_valid(self) -> bool:
        valid = super().is_valid()
        for name, filter_ in self.filters.items():
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else []
            if not values:
                continue
            if any(value == "" for value in values):
                self.form.add_error(name, "must not be empty (leave the parameter out instead)")
            elif len(values) > 1 and not isinstance(filter_, django_filters.MultipleChoiceFilter):
                self.form.add_error(name, "takes one value")
        return valid and not self.form.errors


class StrictOrderingFilter(OrderingFilter):
    """?ordering=field,-other: an unknown field, an empty or a repeated parameter is a 400."""

    def get_ordering(self, request: Request, queryset: QuerySet, view: APIView) -> Any:
        values = request.query_params.getlist(self.ordering_param)
        if not values:
            return self.get_default_ordering(view)
        fields = [term.strip() for term in values[0].split(",")]
        allowed = {name for name, _ in self.get_valid_fields(queryset, view, {"request": request})}
        unknown = [term for term in fields if term.lstrip("-") not in allowed]
        if len(values) > 1 or not values[0] or unknown:
            choices = ", ".join(sorted(allowed))
            raise ValidationError({self.ordering_param: [f"must be one list of fields from: {choices}"]})
        return fields
