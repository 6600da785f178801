"""Cloud Functions entry points (gen2, CloudEvents): thin wrappers over edgefleet.cloud.control.

Deploy (or run locally):
    functions-framework --source functions/main.py --target tag_monitor
    functions-framework --source functions/main.py --target model_done_watcher
    functions-framework --source functions/main.py --target resign_sets
    functions-framework --source functions/main.py --target rollout_controller

Configuration is read from the environment once, on the first event (not at import):
see docs/control-plane.md for the variables.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import functions_framework

_lock = threading.Lock()
_services: dict[str, Any] = {}


def _service(name: str) -> Any:
    with _lock:
        if name not in _services:
            from edgefleet.cloud import control
            from edgefleet.core import logs

            if not _services:
                logs.configure(name, os.environ.get("LOG_LEVEL", "INFO"))
            if name == "rollout_controller":
                from edgefleet.cloud import rollout_controller

                _services[name] = rollout_controller.from_env(os.environ)
            elif name == "tag_monitor":
                config = control.TagMonitorConfig.from_env(os.environ)
                _services[name] = control.TagMonitor.from_config(config)
            elif name == "resign_sets":
                resign = control.ResignConfig.from_env(os.environ)
                _services[name] = control.SetResigner.from_config(resign)
            else:
                config = control.ModelDoneConfig.from_env(os.environ)
                _services[name] = control.ModelDoneWatcher(config)
        return _services[name]


@functions_framework.cloud_event
def tag_monitor(cloud_event: Any) -> None:
    """A registry tag event (Pub/Sub topic ``gcr``) -> manifest sets in the deploy bucket."""
    _service("tag_monitor").handle_cloud_event(cloud_event)


@functions_framework.cloud_event
def model_done_watcher(cloud_event: Any) -> None:
    """A ``MODEL/VERSION/…/TRAINER-DONE`` object finalized -> a build request."""
    _service("model_done_watcher").handle_cloud_event(cloud_event)


@functions_framework.cloud_event
def resign_sets(cloud_event: Any) -> None:
    """A scheduler tick (Pub/Sub) -> sets near their expiry re-signed (short expiry)."""
    _service("resign_sets").handle_cloud_event(cloud_event)


def rollout_controller(cloud_event: Any) -> None:
    """A periodic tick (Pub/Sub, Cloud Scheduler) -> progressive rollouts advance, hold, or
    halt and revert (see edgefleet.cloud.rollout_controller)."""
    from edgefleet.cloud.rollout_controller import handle_tick

    handle_tick(_service("rollout_controller"), cloud_event)
