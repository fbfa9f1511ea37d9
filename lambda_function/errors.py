"""The one exception type the serving code raises for anything a client should hear about."""

from __future__ import annotations


class ServingError(Exception):
    """An error with an HTTP status, a short snake_case code and a human sentence.

    The handler turns it into ``{"error": {"status", "code", "message"}}``; anything that is not a
    ServingError becomes a 500 with a generic message (its traceback goes to the log only).
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_body(self) -> dict:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"ServingError({self.status}, {self.code!r}, {self.message!r})"


def model_unavailable(message: str) -> ServingError:
    """The 500 every model-loading problem becomes (the message goes to the log, not to clients)."""
    return ServingError(500, "model_unavailable", message)
