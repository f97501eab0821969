"""The service's error type (framework-free): an HTTP status, a code, a message and, for limits, the limit's name.

Every error answer of the API has the same JSON body::

    {"error": {"code": "limit_exceeded", "message": "...", "limit": "max_steps", "value": 501, "max": 500}}
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["ServiceError", "LimitError", "error_document"]


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, *, headers: Optional[dict] = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message
        self.headers = dict(headers or {})
        self.extra = {k: v for k, v in extra.items() if v is not None}

    def document(self) -> dict:
        return error_document(self.code, self.message, **self.extra)


class LimitError(ServiceError):
    """A configured limit was exceeded: 413 for sizes, 422 for parameters."""

    def __init__(self, limit: str, message: str, *, value: Any = None, max: Any = None, status: int = 422):
        super().__init__(status, "payload_too_large" if status == 413 else "limit_exceeded", message,
                         limit=limit, value=value, max=max)


def error_document(code: str, message: str, **extra: Any) -> dict:
    return {"error": {"code": code, "message": message, **extra}}
