"""Exceptions shared by every component.

Each error carries a one-line message that names the thing and the fix, so that a CLI
can print it as is and a service can log it as a structured entry.
"""


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """An exception's (or any) message on one line: whitespace runs, newlines included,
    become single spaces, so a library's multi-line error fits a CLI line or a log field;
    cut at ``limit`` characters when given."""
    return " ".join(str(exc).split())[:limit]


class EdgefleetError(Exception):
    """Base class of every error edgefleet raises on purpose."""


class InvalidInput(EdgefleetError):
    """External input (payload, object, argument, config) is malformed: retrying cannot help."""


class InvalidReference(InvalidInput):
    """An image reference does not follow the distribution grammar."""


class PolicyViolation(InvalidInput):
    """A Pod manifest breaks the fleet-safety policy."""

    def __init__(self, violations: list[str], name: str = "") -> None:
        self.violations = list(violations)
        self.name = name
        where = f"{name}: " if name else ""
        super().__init__(where + "; ".join(self.violations))


class NameCollision(InvalidInput):
    """Two repositories would run pods of one name on a channel."""


class InvalidManifestSet(InvalidInput):
    """A manifest set document is malformed."""


class SetRejected(EdgefleetError):
    """A manifest set is well-formed but must not be applied (signature, expiry, replay)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class TransientError(EdgefleetError):
    """A dependency (registry, storage) failed in a way that a retry may fix."""


class ConfigError(EdgefleetError):
    """Configuration (env, flags) is missing or malformed."""
