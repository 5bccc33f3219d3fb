"""Shared API plumbing of every app's API: errors, body limits, pagination, schema responses.

Views translate HTTP to service calls. Services raise Django's ValidationError (keyed by field) and
PermissionDenied; here they become 400 with field errors and 403, in one JSON shape for every endpoint:
``{"field": ["message", ...], "schedule.at": [...]}`` for bad input, ``{"detail": "message"}`` otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, status
from rest_framework.pagination import BasePagination, LimitOffsetPagination
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from scheduler_project.jsonvalues import MAX_JSON_DEPTH, json_storable_problem

from .filters import StrictOrderingFilter

NON_FIELD = "non_field_errors"


class RequestTooLarge(exceptions.APIException):
    """413: the request body is over SCHEDULER_MAX_REQUEST_BYTES (DATA_UPLOAD_MAX_MEMORY_SIZE)."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class Conflict(exceptions.APIException):
    """409: the object is not in a state the action applies to."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is not in a state this action applies to."
    default_code = "conflict"


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE bytes (DRF streams JSON past Django's own check)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if stream is not None else b""
        if limit is not None and len(raw) > limit:
            raise RequestTooLarge(f"The request body is over the limit of {limit} bytes.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = json.loads(raw.decode(encoding), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:
            raise exceptions.ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        problem = json_storable_problem(data)
        if problem:
            raise exceptions.ParseError(problem)
        return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class Pagination(LimitOffsetPagination):
    """?limit= (1-500, default PAGE_SIZE) and ?offset= (0-10^9); anything else is a 400, not ignored."""

    max_limit = 500
    max_offset = 10**9

    def _param(self, request: Request, name: str, low: int, high: int) -> int | None:
        values = request.query_params.getlist(name)
        if not values:
            return None
        text = values[0]
        valid = len(values) == 1 and text.isascii() and text.isdigit() and len(text) <= 12
        if not valid or not low <= int(text) <= high:
            raise exceptions.ValidationError({name: [f"must be one whole number from {low} to {high}"]})
        return int(values[0])

    def get_limit(self, request: Request) -> int | None:
        limit = self._param(request, self.limit_query_param, 1, self.max_limit)
        return self.default_limit if limit is None else limit

    def get_offset(self, request: Request) -> int:
        return self._param(request, self.offset_query_param, 0, self.max_offset) or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: (1, self.max_limit), self.offset_query_param: (0, self.max_offset)}
        for parameter in parameters:
            low, high = bounds[parameter["name"]]
            parameter["schema"].update(minimum=low, maximum=high)
        return parameters


def _flatten(detail: Any, prefix: str = "") -> dict[str, Any]:
    """Nested serializer errors as dotted keys ({"resources": {"cpu": [..]}} -> {"resources.cpu": [..]}).

    A list of objects' errors (many=True, one entry per item, {} for a good one) is keyed by index:
    {"jobs": [{}, {"name": [..]}]} -> {"jobs.1.name": [..]}.
    """
    if isinstance(detail, list) and any(isinstance(item, Mapping) for item in detail):
        detail = {index: item for index, item in enumerate(detail) if item}
    if not isinstance(detail, Mapping):
        return {prefix or NON_FIELD: detail if isinstance(detail, list) else [detail]}
    flat: dict[str, Any] = {}
    for key, value in detail.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) or (
            isinstance(value, list) and any(isinstance(v, Mapping) for v in value)
        ):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus Django ValidationError -> 400 and field errors flattened to dotted keys."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(django_errors(exc))
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = RequestTooLarge(f"The request body is over the limit of {limit} bytes.")
    if isinstance(exc, PermissionDenied):
        message = str(exc) or exceptions.PermissionDenied.default_detail
        exc = exceptions.PermissionDenied(message)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        response.data = _flatten(response.data)
    return response


# Service error key -> API field name: a mapping (keys it lacks pass unchanged) or a function.
KeyMap = Mapping[str, str] | Callable[[str], str]


def _api_key(key_map: KeyMap | None, key: str) -> str:
    if key_map is None:
        return key
    return key_map(key) if callable(key_map) else key_map.get(key, key)


def django_errors(exc: DjangoValidationError, key_map: KeyMap | None = None) -> dict[str, list]:
    """A Django ValidationError as {field: [messages]}, field names translated by key_map.

    Errors about no field are "non_field_errors" unless key_map names them otherwise.
    """
    errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD: exc.messages}
    out: dict[str, list] = {}
    for key, messages in errors.items():
        name = _api_key(key_map, NON_FIELD if key in (NON_FIELD_ERRORS, NON_FIELD) else key)
        out.setdefault(name, []).extend(str(m) for m in messages)
    return out


@contextmanager
def service_errors(key_map: KeyMap | None = None, denied_field: str = "") -> Iterator[None]:
    """A service's ValidationError as 400 keyed by API field names; PermissionDenied as 403 naming a field.

    A PermissionDenied that carries `fields` (service names, e.g. "3.kind") names each of them instead.
    """
    try:
        yield
    except DjangoValidationError as exc:
        raise exceptions.ValidationError(django_errors(exc, key_map)) from None
    except PermissionDenied as exc:
        message = str(exc) or exceptions.PermissionDenied.default_detail
        fields = [_api_key(key_map, field) for field in getattr(exc, "fields", ())]
        fields = fields or ([denied_field] if denied_field else [])
        detail: Any = {"detail": message, **{f: [message] for f in fields}} if fields else message
        raise exceptions.PermissionDenied(detail) from None


class ApiViewMixin:
    """What every API view shares: JSON only, bounded bodies and pages, one error shape."""

    parser_classes: Sequence[type[BaseParser]] = [LimitedJSONParser]
    filter_backends: Sequence[Any] = [DjangoFilterBackend, StrictOrderingFilter]
    lookup_value_regex = "[^/]+"  # "/jobs/0.5/" reaches the view: a JSON 404, not Django's HTML one
    pagination_class: type[BasePagination] | None = Pagination

    def get_exception_handler(self) -> Any:
        return api_exception_handler


_ERROR = OpenApiTypes.OBJECT
_ERRORS: dict[str, OpenApiResponse] = {
    "400": OpenApiResponse(_ERROR, description='Bad input: {"field": ["message"]} (dotted for nested)'),
    "401": OpenApiResponse(_ERROR, description="No valid credentials (Authorization: Token ...)"),
    "403": OpenApiResponse(_ERROR, description="The user's role does not allow this"),
    "404": OpenApiResponse(_ERROR, description="No such object visible to this user"),
    "413": OpenApiResponse(_ERROR, description="Request body over SCHEDULER_MAX_REQUEST_BYTES"),
}


class ApiSchema(AutoSchema):
    """Documents the error responses every operation can give, beside its success responses."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        codes = ["400", "401", "403"]
        if "{" in self.path:
            codes.append("404")
        if self.method in ("POST", "PUT", "PATCH"):
            codes.append("413")
        for code in codes:
            if code not in responses:
                responses[code] = self._get_response_for_code(_ERRORS[code], code, direction=direction)
        return responses
