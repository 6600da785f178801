"""The VERSION an operator sees: each running image's ``org.opencontainers.image.version``
label, read from the registry the operator configured, never from one a report names.

A device report is untrusted: its image references could name any host. Asking that host
for a manifest would send the operator's registry token to it and let a device make the
CLI or dashboard reach out anywhere. So only images under the configured registries
(``EDGEFLEET_REGISTRY``, else ``ALLOWED_REGISTRIES``, both ``host[:port][/path]``
prefixes as devices use them) are looked up; any other shows no version. Answers are
cached per digest (content-addressed, so never stale); a failed lookup is retried only
after ``retry_after`` seconds, so a registry outage costs one timeout, not one per row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgefleet.core import policy, refs
from edgefleet.core.errors import EdgefleetError, InvalidReference

VERSION_LABEL = "org.opencontainers.image.version"


def configured_registries(env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The registries the operator's commands may ask about versions (empty: none)."""
    for key in ("EDGEFLEET_REGISTRY", "ALLOWED_REGISTRIES"):
        found = policy.parse_registries(env.get(key))
        if found:
            return found
    return ()


class VersionLookup:
    """``lookup(image ref) -> version label or None``, one registry client for all calls."""

    def __init__(
        self,
        allowed: tuple[str, ...],
        *,
        client: Any = None,
        insecure: str | None = None,
        retry_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self._client = client
        self._insecure = insecure
        self._retry_after = retry_after
        self._clock = clock
        self._versions: dict[str, str | None] = {}
        self._failed: dict[str, float] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> VersionLookup:
        return cls(configured_registries(env), insecure=env.get("INSECURE_REGISTRIES"))

    def __call__(self, image: str) -> str | None:
        try:
            ref = refs.parse(image)
        except InvalidReference:
            return None
        if not ref.digest or not refs.registry_allows(ref, self.allowed):
            return None
        if ref.digest in self._versions:
            return self._versions[ref.digest]
        if self._clock() < self._failed.get(ref.digest, float("-inf")):
            return None
        try:
            client = self._registry()
            config = client.get_config(ref, client.get_manifest(ref))
            labels = (config.get("config") or {}).get("Labels") or {}
            value = labels.get(VERSION_LABEL) if isinstance(labels, dict) else None
        except (EdgefleetError, OSError, AttributeError):
            self._failed[ref.digest] = self._clock() + self._retry_after
            return None
        self._versions[ref.digest] = str(value) if value else None
        return self._versions[ref.digest]

    def _registry(self) -> Any:
        if self._client is None:
            from edgefleet.cloud.registry import RegistryClient, parse_insecure

            self._client = RegistryClient(insecure=parse_insecure(self._insecure))
        return self._client
