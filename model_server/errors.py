"""Errors of the model server: a bad request carries its HTTP status and a metric kind."""

from __future__ import annotations

from edgefleet.core.errors import ConfigError, InvalidInput


class RequestError(InvalidInput):
    """A client sent something the server refuses; answered as a 4xx JSON error."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class ModelLoadError(ConfigError):
    """The model cannot run on this device (missing delegate, broken file, bad tensors)."""
