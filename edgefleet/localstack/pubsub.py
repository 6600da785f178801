"""The official Pub/Sub emulator (``gcloud beta emulators pubsub start``), plus admin and
client helpers that talk to it without touching ``os.environ``.

gcloud starts a Java server through a wrapper script; all of it runs in the process group
:class:`~edgefleet.localstack.process.ManagedProcess` creates, so stopping the group ends
the Java process too. Its data and gcloud's own config live under the workdir, so that
several emulators (parallel test runs) never share state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import grpc
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from edgefleet.localstack.process import ManagedProcess, MissingTool, free_port, http_ready

PROJECT = "edgefleet-local"


def publisher(host: str) -> pubsub_v1.PublisherClient:
    """A publisher for the emulator at ``host`` (plain gRPC, no credentials)."""
    return pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host))
    )


def subscriber(host: str) -> pubsub_v1.SubscriberClient:
    return pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host))
    )


class PubsubEmulator:
    """One Pub/Sub emulator on 127.0.0.1, project :data:`PROJECT`."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        port: int | None = None,
        project: str = PROJECT,
        name: str = "pubsub-emulator",
    ) -> None:
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise MissingTool(
                "gcloud is missing (the Pub/Sub emulator ships with google-cloud-cli); "
                "run 'make install'"
            )
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.project = project
        data = self.workdir / "pubsub-data"
        config = self.workdir / "gcloud-config"
        data.mkdir(parents=True, exist_ok=True)
        config.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            CLOUDSDK_CONFIG=str(config),
            CLOUDSDK_CORE_DISABLE_PROMPTS="1",
            CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
            CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1",
        )
        env.pop("PUBSUB_EMULATOR_HOST", None)
        argv = [
            gcloud, "beta", "emulators", "pubsub", "start",
            f"--host-port={self.host}",
            f"--project={project}",
            f"--data-dir={data}",
            "--quiet",
        ]  # fmt: skip
        self.process = ManagedProcess(name, argv, workdir=self.workdir, env=env)
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.host,
            "PUBSUB_PROJECT_ID": self.project,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def start(self, timeout: float = 60.0) -> PubsubEmulator:
        self.process.start()
        # The emulator's HTTP front answers "Ok" on / once it serves.
        self.process.wait_ready(
            lambda: http_ready(f"http://{self.host}/"), timeout=timeout, what="Pub/Sub emulator"
        )
        return self

    def stop(self) -> None:
        self.process.stop(timeout=10.0)

    def __enter__(self) -> PubsubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients and admin --------------------------------------------------------------

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        if self._publisher is None:
            self._publisher = publisher(self.host)
        return self._publisher

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        if self._subscriber is None:
            self._subscriber = subscriber(self.host)
        return self._subscriber

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, topic: str) -> str:
        """Create ``topic`` (idempotent); returns its full path."""
        path = self.topic_path(topic)
        with contextlib.suppress(gexc.AlreadyExists):
            self.publisher.create_topic(request={"name": path})
        return path

    def create_pull_subscription(
        self, topic: str, name: str, *, ack_deadline_seconds: int = 10
    ) -> str:
        return self._subscribe(topic, name, None, ack_deadline_seconds)

    def create_push_subscription(
        self, topic: str, name: str, push_endpoint: str, *, ack_deadline_seconds: int = 10
    ) -> str:
        """A push subscription POSTing the raw push format to ``push_endpoint``."""
        return self._subscribe(topic, name, push_endpoint, ack_deadline_seconds)

    def _subscribe(
        self, topic: str, name: str, push_endpoint: str | None, ack_deadline_seconds: int
    ) -> str:
        self.create_topic(topic)
        path = self.subscription_path(name)
        request: dict[str, object] = {
            "name": path,
            "topic": self.topic_path(topic),
            "ack_deadline_seconds": ack_deadline_seconds,
        }
        if push_endpoint:
            request["push_config"] = {"push_endpoint": push_endpoint}
        with contextlib.suppress(gexc.AlreadyExists):
            self.subscriber.create_subscription(request=request)
        return path

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish one message and wait for its id."""
        return self.publisher.publish(self.topic_path(topic), data, **attributes).result(timeout=30)

    def pull(self, subscription: str, *, max_messages: int = 100, timeout: float = 5.0) -> list:
        """Pull and ack what is available (one synchronous pull); received messages."""
        path = self.subscription_path(subscription)
        try:
            resp = self.subscriber.pull(
                request={"subscription": path, "max_messages": max_messages}, timeout=timeout
            )
        except gexc.DeadlineExceeded:
            return []
        if resp.received_messages:
            self.subscriber.acknowledge(
                request={
                    "subscription": path,
                    "ack_ids": [m.ack_id for m in resp.received_messages],
                }
            )
        return [m.message for m in resp.received_messages]
