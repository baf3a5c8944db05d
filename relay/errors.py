"""The one exception tree of relay.

Every error a client can be told about carries its contract ``code``::

    RelayError                      base; never raised itself
    ├── BadRequest                  bad_request   (malformed payload, bad name)
    ├── Unauthorized                unauthorized  (no or bad token)
    ├── Forbidden                   forbidden     (valid token, not for this room or action)
    ├── NotFound                    not_found
    ├── TooLarge                    too_large     (payload over the limit)
    ├── RateLimited                 rate_limited
    ├── Unavailable                 unavailable   (a backend is down)
    ├── Internal                    internal      (a bug; the client sees no detail)
    └── ConfigError                 a setting has a value relay cannot use (start-up only)
"""

from __future__ import annotations

from typing import Any, ClassVar


class RelayError(Exception):
    """Base of every relay error; ``code`` is the contract's error code."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The contract's error object: ``{"code", "message"}``."""
        return {"code": self.code, "message": self.message}


class BadRequest(RelayError):
    code = "bad_request"
    http_status = 400


class Unauthorized(RelayError):
    code = "unauthorized"
    http_status = 401


class Forbidden(RelayError):
    code = "forbidden"
    http_status = 403


class NotFound(RelayError):
    code = "not_found"
    http_status = 404


class TooLarge(RelayError):
    code = "too_large"
    http_status = 413


class RateLimited(RelayError):
    """A limit was hit; ``retry_after`` (seconds) says when trying again can succeed, if known."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.retry_after is not None:
            body["retry_after_ms"] = max(1, round(self.retry_after * 1000))
        return body


class Unavailable(RelayError):
    code = "unavailable"
    http_status = 503


class Internal(RelayError):
    code = "internal"
    http_status = 500

    def __init__(self, message: str = "internal error; see the server log") -> None:
        super().__init__(message)


class ConfigError(RelayError):
    """A setting cannot be used; raised while settings are built, before anything starts."""

    code = "config"
