"""The exception tree of lstmad.

Every error that lstmad raises on purpose derives from :class:`LstmadError`, so a
caller can catch one type. Messages say what was expected, what was found, and
which key, URL or file was involved::

    LstmadError
    ├── ConfigError        invalid configuration (file, env or flags); the CLI exits 2
    ├── SourceError        the metrics source (VictoriaMetrics / Prometheus) failed
    │   ├── SourceTimeout      no answer within the timeout
    │   ├── SourceConnectionError  could not connect
    │   ├── SourceHTTPError    a non-2xx HTTP status
    │   └── SourceResponseError    a body that is not a valid Prometheus API answer
    ├── DataError          input data that cannot be used (too short, wrong shape)
    └── ModelError         a model directory that is missing, corrupt or incompatible
        └── NotFittedError     a detector or threshold used before fit()
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "LstmadError",
    "ModelError",
    "NotFittedError",
    "SourceConnectionError",
    "SourceError",
    "SourceHTTPError",
    "SourceResponseError",
    "SourceTimeout",
]


class LstmadError(Exception):
    """Root of every error lstmad raises on purpose."""


class ConfigError(LstmadError):
    """The configuration is invalid; ``key`` names the offending setting when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class SourceError(LstmadError):
    """The metrics source failed. ``reason`` is the bounded label used in metrics."""

    reason = "bad_response"


class SourceTimeout(SourceError):
    reason = "timeout"


class SourceConnectionError(SourceError):
    reason = "connection"


class SourceHTTPError(SourceError):
    reason = "http"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SourceResponseError(SourceError):
    """The body was not a usable Prometheus HTTP API answer (or said status=error)."""

    def __init__(self, message: str, reason: str = "bad_response") -> None:
        super().__init__(message)
        self.reason = reason


class DataError(LstmadError):
    """Input data cannot be used as given."""


class ModelError(LstmadError):
    """A model directory is missing, corrupt or does not match the configuration."""


class NotFittedError(ModelError):
    """A detector or threshold was used before it was fitted."""
