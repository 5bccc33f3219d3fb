"""JSON-typed serializer fields: a number is a JSON number, a boolean a JSON boolean, a string a string.

DRF's own fields also accept "5" for 5 and "true" for true; the API refuses what its schema does not allow,
so a client learns about a wrong type at once (and schemathesis' negative tests hold).
"""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

INT32_MAX = 2**31 - 1
SMALLINT_MAX = 2**15 - 1


class Text(serializers.CharField):
    """A JSON string."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Integer(serializers.IntegerField):
    """A JSON whole number (not a string, a boolean or 1.5)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class Boolean(serializers.BooleanField):
    """A JSON true or false."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class Number(serializers.DecimalField):
    """A JSON number, read as a Decimal and written as a number (not a string)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("coerce_to_string", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.DATETIME)
class DateTimeText(Text):
    """An ISO-8601 date-time kept as text; an aware one in UTC, a naive one left for the service's zone."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=64, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        text = super().to_internal_value(data)
        try:
            parsed = parse_datetime(text) if text else None
        except ValueError:  # well-formed but no such day: the service names the field
            return text
        if parsed is None or timezone.is_naive(parsed):
            return text  # naive (in the service's zone) or unparseable: the service decides
        try:
            # PostgreSQL stores offsets only up to 15:59 and years up to 9999 in UTC.
            return parsed.astimezone(UTC).isoformat()
        except OverflowError:
            raise serializers.ValidationError("is out of range") from None


class SizedJSONField(serializers.JSONField):
    """Any JSON value whose compact encoding is at most SCHEDULER_MAX_PAYLOAD_BYTES."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        limit = settings.SCHEDULER_MAX_PAYLOAD_BYTES
        if len(json.dumps(value, separators=(",", ":")).encode()) > limit:
            raise serializers.ValidationError(f"must be at most {limit} bytes as JSON")
        return value


@extend_schema_field(
    {"type": "object", "additionalProperties": {"type": "string"}, "example": {"region": "eu"}}
)
class LabelsField(SizedJSONField):
    """An object of label names to string values."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise serializers.ValidationError("must be an object of label names to string values")
        return value
