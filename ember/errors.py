"""Domain errors shared by every layer.

Managers raise these; the API layer maps them to Hypeman's error body
`{"code", "message"}` with the status each class carries. Keeping them out of
`ember.api` lets managers stay independent of HTTP.
"""

from __future__ import annotations


class EmberError(Exception):
    """Base class: a failure with a stable machine-readable code and an HTTP status."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(EmberError):
    status = 400
    code = "bad_request"


class Unauthorized(EmberError):
    status = 401
    code = "unauthorized"


class NotFound(EmberError):
    status = 404
    code = "not_found"


class Conflict(EmberError):
    status = 409
    code = "conflict"


class InvalidState(Conflict):
    code = "invalid_state"


class InsufficientResources(EmberError):
    """The host cannot take this now (memory, CPU): retry later or free something."""

    status = 429
    code = "insufficient_resources"


class Unavailable(EmberError):
    status = 503
    code = "unavailable"
