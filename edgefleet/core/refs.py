"""Image references, parsed per the distribution reference grammar.

Only fully-qualified references are accepted (``HOST[:PORT]/PATH[:TAG][@DIGEST]``):
a fleet manifest must never depend on a client's default registry. Anything that does
not match the grammar is rejected with an :class:`InvalidReference` naming the part
that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgefleet.core.errors import InvalidReference

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME_TOTAL_LENGTH_MAX = 255


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed reference. ``repository`` is the path below the registry host."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``HOST[:PORT]/PATH``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def last_component(self) -> str:
        return self.repository.rsplit("/", 1)[-1]

    def with_digest(self, digest: str) -> ImageRef:
        """The digest-pinned form (tag dropped): what manifests run."""
        return ImageRef(self.registry, self.repository, None, check_digest(digest))

    def with_tag(self, tag: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, check_tag(tag), None)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag or ""):
        raise InvalidReference(
            f"invalid tag {tag!r}: letters, digits, '_', '.' and '-', at most 128, "
            "not starting with '.' or '-'"
        )
    return tag


def check_digest(digest: str) -> str:
    if not _DIGEST_RE.fullmatch(digest or ""):
        raise InvalidReference(f"invalid digest {digest!r}: expected ALGORITHM:HEX, e.g. sha256:…")
    if digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
        raise InvalidReference(
            f"invalid sha256 digest {digest!r}: expected 64 lowercase hex digits"
        )
    return digest


def parse(reference: str) -> ImageRef:
    """Parse ``HOST[:PORT]/PATH[:TAG][@DIGEST]``; raise :class:`InvalidReference` otherwise."""
    if not isinstance(reference, str) or not reference:
        raise InvalidReference("empty image reference: expected HOST[:PORT]/PATH[:TAG][@DIGEST]")
    if any(c.isspace() for c in reference):
        raise InvalidReference(f"invalid image reference {reference!r}: contains white space")
    rest, digest = reference, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        check_digest(digest)
    if "/" not in rest:
        raise InvalidReference(
            f"image reference {reference!r} has no registry host: "
            "use a fully-qualified HOST[:PORT]/PATH reference"
        )
    domain, remainder = rest.split("/", 1)
    tag = None
    if ":" in remainder:
        remainder, tag = remainder.rsplit(":", 1)
        check_tag(tag)
    if not _DOMAIN_RE.fullmatch(domain) or not (
        "." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")
    ):
        raise InvalidReference(
            f"image reference {reference!r} has no registry host: "
            "the first component must be a host (with a '.' or ':port', or 'localhost')"
        )
    if not _PATH_RE.fullmatch(remainder):
        raise InvalidReference(
            f"invalid repository path {remainder!r} in {reference!r}: lowercase path "
            "components of letters and digits joined by '.', '_', '__' or '-'"
        )
    if len(domain) + 1 + len(remainder) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(f"image name in {reference!r} is longer than 255 characters")
    return ImageRef(domain, remainder, tag, digest)


def is_pinned(reference: str) -> bool:
    """True when ``reference`` parses and carries a sha256 digest."""
    try:
        ref = parse(reference)
    except InvalidReference:
        return False
    return ref.digest is not None and ref.digest.startswith("sha256:")


def registry_allows(ref: ImageRef, allowed: tuple[str, ...]) -> bool:
    """True when ``ref`` lies under one of the ``host[:port][/path]`` prefixes in ``allowed``.

    A prefix matches whole components only: ``reg:5000/team`` allows
    ``reg:5000/team/model`` but not ``reg:5000/teamx/model`` nor ``reg:50001/team``.
    """
    name = ref.name
    for prefix in allowed:
        prefix = prefix.strip().rstrip("/")
        if prefix and (name == prefix or name.startswith(prefix + "/")):
            return True
    return False
