"""What can go wrong when talking to milkglass, as exceptions a caller can catch by kind."""

from __future__ import annotations

from typing import Any, Optional


class MilkglassError(Exception):
    """Base class of every error this package raises."""


class ApiError(MilkglassError):
    """The server answered an HTTP request with an error.

    ``status`` is the HTTP status, ``code`` the server's error code (``invalid``, ``forbidden``, ...),
    ``field`` the input it names when it names one.
    """

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None,
                 details: Optional[Any] = None):
        where = f" ({field})" if field else ""
        super().__init__(f"{status} {code}{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.details = details


class InvalidQuery(MilkglassError):
    """The query cannot be planned: a syntax error, an unknown table or column, or not a SELECT."""


class UnsupportedExpression(MilkglassError):
    """A Polars expression or verb that the SQL compiler does not translate (yet)."""


class QueryRefused(MilkglassError):
    """The guard refused the query: it falls outside the table's safe zone under ``reject``.

    ``explanation`` is the guard's own sentence naming the rule that failed.
    """

    def __init__(self, explanation: str):
        super().__init__(explanation)
        self.explanation = explanation


class QueryRejected(MilkglassError):
    """The owner reviewed the held query and rejected it; ``reason`` is theirs."""

    def __init__(self, request_id: int, reason: str):
        super().__init__(f"the owner rejected request {request_id}: {reason}")
        self.request_id = request_id
        self.reason = reason


class QueryHeld(MilkglassError):
    """The query still waits for the owner's review after the caller's timeout.

    Collect it later with ``Client.fetch_request(request_id)``.
    """

    def __init__(self, request_id: int, message: str):
        super().__init__(message)
        self.request_id = request_id


class FlaggedQueryWarning(UserWarning):
    """The query was outside the safe zone under ``log``: answered, and flagged in the owner's audit log."""
