"""The control plane's services: configuration from env, CloudEvent envelopes, outcomes.

``functions/main.py`` stays a few lines: it builds a service once (lazily, from
``os.environ``) and hands it each CloudEvent. Here every envelope is validated; a
malformed event is logged as ONE structured error and acknowledged (a retry cannot fix
it), while a :class:`~edgefleet.core.errors.TransientError` (registry or storage down, sets
kept changing) propagates so that Pub/Sub redelivers.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.cloud.build import Builder, BuildResult, builder_from_env
from edgefleet.cloud.model_done import StoredObject, build_request
from edgefleet.cloud.registry import RegistryClient, RegistryError, parse_insecure
from edgefleet.cloud.render import BucketTemplates, PackagedTemplates, Templates
from edgefleet.cloud.set_store import SetStore, UntrustedSet, load_signer
from edgefleet.cloud.storage import Bucket, make_client
from edgefleet.cloud.tag_events import Outcome, Reconciler, parse_event
from edgefleet.core import layout, policy, signing
from edgefleet.core.bucket import Conflict
from edgefleet.core.errors import ConfigError, EdgefleetError, InvalidInput, TransientError
from edgefleet.core.logs import fields

log = logging.getLogger("edgefleet.cloud.control")

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
GCS_FINALIZE_NOTIFICATION = "OBJECT_FINALIZE"
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PubsubMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str


def pubsub_message(data: Any) -> PubsubMessage:
    """The Pub/Sub message inside a ``messagePublished`` CloudEvent's data."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"event data is not JSON: {exc}") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("message"), Mapping):
        raise InvalidInput("event data holds no Pub/Sub 'message' object")
    message = data["message"]
    raw = message.get("data", "")
    if not isinstance(raw, str):
        raise InvalidInput("Pub/Sub message data is not a base64 string")
    if len(raw) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput(f"Pub/Sub message data is over {MAX_MESSAGE_BYTES} bytes")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"Pub/Sub message data is not base64: {exc}") from exc
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise InvalidInput("Pub/Sub message attributes must map strings to strings")
    message_id = message.get("messageId") or message.get("message_id") or ""
    return PubsubMessage(payload, dict(attributes), str(message_id))


def _event_type(cloud_event: Any) -> str:
    try:
        return str(cloud_event["type"])
    except (KeyError, TypeError):
        return ""


def _event_id(cloud_event: Any) -> str:
    try:
        return str(cloud_event["id"])
    except (KeyError, TypeError):
        return ""


# --- tag_monitor ------------------------------------------------------------------------


@dataclass(frozen=True)
class TagMonitorConfig:
    deploy_bucket: str
    channels: tuple[str, ...]
    arches: tuple[str, ...]
    insecure_registries: frozenset[str]
    signing_key: str
    trusted_keys: str
    allowed_registries: tuple[str, ...] | None
    telemetry_project: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TagMonitorConfig:
        bucket = (env.get("DEPLOY_BUCKET") or "").strip()
        if not bucket:
            raise ConfigError("DEPLOY_BUCKET is not set: name the deploy bucket")
        try:
            channels = layout.parse_channels(env.get("CHANNELS"))
            arches = layout.parse_arches(env.get("ARCHES"))
        except InvalidInput as exc:
            raise ConfigError(f"CHANNELS/ARCHES: {exc}") from exc
        return cls(
            deploy_bucket=bucket,
            channels=channels,
            arches=arches,
            insecure_registries=parse_insecure(env.get("INSECURE_REGISTRIES")),
            signing_key=(env.get("SIGNING_KEY") or "").strip(),
            trusted_keys=(env.get("TRUSTED_KEYS") or "").strip(),
            allowed_registries=policy.parse_registries(env.get("ALLOWED_REGISTRIES")),
            telemetry_project=(env.get("TELEMETRY_PROJECT") or "").strip(),
        )


class TagMonitor:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler

    @classmethod
    def from_config(cls, config: TagMonitorConfig, bucket: Bucket | None = None) -> TagMonitor:
        bucket = bucket or Bucket(make_client(), config.deploy_bucket)
        store = SetStore(
            bucket,
            signer=load_signer(config.signing_key),
            trusted_keys=signing.load_public_keys(config.trusted_keys),
        )
        templates = Templates([BucketTemplates(bucket), PackagedTemplates()])
        registry = RegistryClient(insecure=config.insecure_registries)
        reconciler = Reconciler(
            registry,
            store,
            templates,
            policy.Policy(allowed_registries=config.allowed_registries),
            channels=config.channels,
            arches=config.arches,
            template_values={"telemetry_project": config.telemetry_project},
        )
        return cls(reconciler)

    def handle_cloud_event(self, cloud_event: Any) -> Outcome | None:
        """Handle one event; ``None`` when it was rejected as malformed (and logged)."""
        event_id = _event_id(cloud_event)
        event = None
        try:
            message = pubsub_message(getattr(cloud_event, "data", None))
            event = parse_event(message.data)
            outcome = self.reconciler.handle(event)
        except (TransientError, Conflict) as exc:
            log.warning(
                "tag event failed transiently; Pub/Sub will redeliver",
                extra=fields(event="tag-event-retry", event_id=event_id, error=str(exc)),
            )
            raise
        except (InvalidInput, RegistryError, UntrustedSet) as exc:
            log.error(
                "tag event rejected",
                extra=fields(
                    event="tag-event-rejected",
                    event_id=event_id,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    tag=str(event.tag) if event and event.tag else None,
                    digest=str(event.digest) if event and event.digest else None,
                ),
            )
            return None
        entry = fields(
            event="tag-event",
            event_id=event_id,
            action=event.action,
            tag=str(event.tag) if event.tag else None,
            digest=str(event.digest) if event.digest else None,
            **outcome.as_fields(),
        )
        if outcome.untrusted:
            log.error("tag event left untrusted manifest sets alone", extra=entry)
        elif outcome.ignored:
            log.info("tag event ignored: not a channel tag", extra=entry)
        else:
            log.info("tag event reconciled", extra=entry)
        return outcome


# --- model_done_watcher -----------------------------------------------------------------


def finalized_object(cloud_event: Any) -> StoredObject | None:
    """The object a GCS-finalize CloudEvent (Eventarc) or a Pub/Sub GCS notification
    names; ``None`` for other notification types (deletes, metadata updates)."""
    kind = _event_type(cloud_event)
    data = getattr(cloud_event, "data", None)
    if kind == GCS_FINALIZED:
        if isinstance(data, (bytes, str)):
            try:
                data = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidInput(f"storage event data is not JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise InvalidInput("storage event data is not an object")
        return _stored(data.get("bucket"), data.get("name"))
    if kind == PUBSUB_PUBLISHED:
        message = pubsub_message(data)
        attrs = message.attributes
        if attrs.get("eventType") != GCS_FINALIZE_NOTIFICATION:
            return None
        return _stored(attrs.get("bucketId"), attrs.get("objectId"))
    raise InvalidInput(
        f"unexpected event type {kind!r}: want {GCS_FINALIZED} or {PUBSUB_PUBLISHED}"
    )


def _stored(bucket: Any, name: Any) -> StoredObject:
    if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
        raise InvalidInput("storage event names no bucket/object")
    if len(name.encode()) > 1024:
        raise InvalidInput("storage event object name is over 1024 bytes")
    return StoredObject(bucket, name)


@dataclass(frozen=True)
class ModelDoneConfig:
    arches: tuple[str, ...]
    model_bucket: str  # only markers in this bucket are acted on ("" = any)
    env: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelDoneConfig:
        try:
            arches = layout.parse_arches(env.get("ARCHES"))
        except InvalidInput as exc:
            raise ConfigError(f"ARCHES: {exc}") from exc
        return cls(arches, (env.get("MODEL_BUCKET") or "").strip(), dict(env))


class ModelDoneWatcher:
    def __init__(
        self, config: ModelDoneConfig, builder_factory: Callable[[], Builder] | None = None
    ) -> None:
        self.config = config
        self._factory = builder_factory or (lambda: builder_from_env(config.env))
        self._builder: Builder | None = None

    @property
    def builder(self) -> Builder:
        if self._builder is None:  # built on the first marker, not for every other object
            self._builder = self._factory()
        return self._builder

    def handle_cloud_event(self, cloud_event: Any) -> BuildResult | None:
        event_id = _event_id(cloud_event)
        obj = None
        request = None
        try:
            obj = finalized_object(cloud_event)
            if obj is None:
                log.info("storage event ignored: not a finalize", extra=fields(event_id=event_id))
                return None
            if self.config.model_bucket and obj.bucket != self.config.model_bucket:
                raise InvalidInput(
                    f"marker in bucket {obj.bucket}, but MODEL_BUCKET is {self.config.model_bucket}"
                )
            request = build_request(obj, self.config.arches)
            if request is None:
                log.info(
                    "storage event ignored: not a TRAINER-DONE marker",
                    extra=fields(event="object-ignored", event_id=event_id, object=obj.name),
                )
                return None
            log.info(
                "model version done; building images",
                extra=fields(
                    event="build-requested",
                    event_id=event_id,
                    model=request.model,
                    version=request.version,
                    source=request.source,
                    arches=list(request.arches),
                ),
            )
            result = self.builder.build(request)
        except TransientError:
            raise
        except InvalidInput as exc:
            log.error(
                "storage event rejected",
                extra=fields(
                    event="model-done-rejected",
                    event_id=event_id,
                    object=f"gs://{obj.bucket}/{obj.name}" if obj else None,
                    error=str(exc),
                ),
            )
            return None
        except ConfigError:
            raise
        except EdgefleetError as exc:
            log.error(
                "build failed",
                extra=fields(
                    event="build-failed",
                    event_id=event_id,
                    version=request.version if request else None,
                    error=str(exc),
                ),
            )
            return None
        log.info(
            "build started",
            extra=fields(
                event="build-done", images=list(result.images), detail=result.detail or None
            ),
        )
        return result
